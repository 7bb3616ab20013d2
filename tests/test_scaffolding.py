"""The test suite's own scaffolding: one loopback-only Ray for the session, one polling
helper that fails naming what it waited for, and one writer of the synthetic dataset layouts."""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import pytest

from tokenize_helpers import make_clotho, make_llava, wait_for

TESTS = Path(__file__).resolve().parent

# Modules allowed to call ray.init themselves, and why.
OWN_RAY = {
    "test_tokenize_cluster.py": "joins its own two-node ray.cluster_utils.Cluster by address",
    "reliability/test_security.py": "the control: a bare ray.init in a subprocess, to show what connect() avoids",
}


def test_wait_for_fails_naming_what_it_waited_for():
    assert wait_for(lambda: True, timeout=0.1, what="nothing") is True
    with pytest.raises(AssertionError, match=r"timed out after 0.2 s waiting for the first shard index"):
        wait_for(lambda: False, timeout=0.2, step=0.01, what="the first shard index")


# The suite's shared helpers, each defined in one module that the others import.
ONE_HOME = {
    "wait_for": "tokenize_helpers.py",
    "verify_quick": "verify_helpers.py",
    "make_sources": "verify_helpers.py",
    "make_space": "test_shards.py",
}
RETIRED = {"make_fault_sources": "make_sources", "tiny_space": "make_space"}  # near copies, merged


def test_each_shared_helper_is_defined_in_one_module():
    defined: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                defined.setdefault(node.name, []).append(path.relative_to(TESTS).as_posix())
    for name, home in ONE_HOME.items():
        assert defined.get(name) == [home], f"{name} is defined in {defined.get(name)}; keep it in {home} alone"
    for name, instead in RETIRED.items():
        assert name not in defined, f"{name} ({defined[name]}): use {instead} ({ONE_HOME[instead]})"


def test_no_test_module_starts_ray_by_itself():
    """Ray comes from tests/conftest.py (`ray_session`, through uti.ray_local.connect: loopback only) or, for
    a module that needs another Ray, after `private_ray` stopped the shared one; a bare ray.init listens on
    every interface and a module-owned instance leaks into or is joined by the next module."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel in OWN_RAY or path.name == Path(__file__).name:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bray\.init\(", line) or re.search(r"\bensure_ray\(None", line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "start Ray through the ray_session fixture instead:\n" + "\n".join(found)


def test_modules_with_their_own_ray_stop_the_shared_one_first():
    for name in ("test_tokenize_resources.py", "test_tokenize_cluster.py", "test_job_submit.py",
                 "test_object_storage.py"):
        assert 'usefixtures("private_ray")' in (TESTS / name).read_text(encoding="utf-8"), name


def test_modules_with_their_own_ray_run_last_in_their_order():
    from types import SimpleNamespace

    from conftest import own_ray_modules_last

    def item(module: str, *fixtures: str):
        return SimpleNamespace(path=f"tests/{module}", fixturenames=("tmp_path", *fixtures), name=module)

    items = [item("a.py"), item("b.py", "private_ray"), item("b.py"), item("c.py", "ray_session"),
             item("d.py", "private_ray"), item("e.py")]
    assert [i.path for i in own_ray_modules_last(items)] == [
        "tests/a.py", "tests/c.py", "tests/e.py", "tests/b.py", "tests/b.py", "tests/d.py"]


@pytest.mark.ray
def test_the_session_ray_is_loopback_only_with_the_shared_cpus(ray_session):
    from conftest import SHARED_RAY_CPUS

    nodes = [n for n in ray_session.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray_session.cluster_resources().get("CPU") == SHARED_RAY_CPUS


def test_the_tests_sets_are_written_by_the_demos_writers(tmp_path):
    """tokenize_helpers' Clotho and LLaVA sets go through demo.data's writers: same CSV header and columns,
    same JSON entry shape as the demo's sets, plus the broken files the tests need."""
    import json

    from demo.data import make_clotho_set, make_llava_set

    make_clotho(tmp_path / "t" / "clotho")
    make_llava(tmp_path / "t" / "llava", n=2)
    make_clotho_set(tmp_path / "d" / "clotho", clips=4)
    make_llava_set(tmp_path / "d" / "llava", images=2)

    def header(csv_path):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh))

    assert header(tmp_path / "t/clotho/clotho_captions_development.csv") == \
        header(tmp_path / "d/clotho/clotho_captions_development.csv")
    names = [r[0] for r in csv.reader(open(tmp_path / "t/clotho/clotho_captions_development.csv", encoding="utf-8"))][1:]
    assert names[-2:] == ["corrupt.wav", "nan.wav"] and all((tmp_path / "t/clotho/development" / n).is_file() for n in names)
    t_entries = json.loads((tmp_path / "t/llava/blip_laion_cc_sbu_558k.json").read_text())
    d_entries = json.loads((tmp_path / "d/llava/blip_laion_cc_sbu_558k.json").read_text())
    assert {tuple(e) for e in t_entries} == {tuple(e) for e in d_entries} == {("id", "image", "conversations")}
    assert [e["id"] for e in t_entries] == ["000000000", "000000001", "trunc"]
    trunc = (tmp_path / "t/llava/images/trunc.png").read_bytes()
    assert trunc and trunc == (tmp_path / "t/llava/images/00000.png").read_bytes()[: len(trunc)]
