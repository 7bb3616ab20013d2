"""Files and folders named like our packages in the user's working directory change nothing.

Our top-level packages (`uti`, `sharding`, `ray_jobs`, `verify`, `train`, `demo`, `bench`) are common
words. Ray puts the driver's working directory first on every worker's import path, so a `verify.py`
there would make `uti verify` fail healthy shards, and a `sharding.py` would stop `uti tokenize`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenize_helpers import shard_bytes
from verify_helpers import ray_address  # noqa: F401 - a fixture, imported by name

OUR_PACKAGES = ("uti", "sharding", "ray_jobs", "verify", "train", "demo", "bench")


def _plant(folder: Path, names) -> Path:
    """A module per name that records its import (in any process) and then fails it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        marker = folder / f"imported-{name}"
        (folder / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').close()\nraise RuntimeError('the shadow {name} was imported')\n")
    return folder


def _imported(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("imported-*"))


@pytest.mark.ray
def test_tokenize_and_verify_ignore_modules_named_like_ours_in_the_working_directory(tmp_path, tokenize_manifests,
                                                                                     reference_run, ray_address):
    """One tokenize + verify through the CLI from a folder holding verify.py, sharding.py, train.py,
    ray_jobs.py, demo.py, bench.py and uti.py: both succeed, the shards are byte-identical to a run from
    a clean folder, and no process imported any of those files.

    tokenize starts a local Ray of its own (its workers start in that folder); verify joins the suite's
    Ray with --address (Ray sends a joining driver's folder to the workers too, through its job config),
    which saves a second Ray start."""
    manifests = tokenize_manifests
    work = _plant(tmp_path / "work", OUR_PACKAGES)
    # Relative paths on purpose: they are resolved on the driver, whatever the workers' directory.
    rel = [os.path.relpath(m, work) for m in manifests]
    cmd = ["uti", "tokenize", "--out", "out", "--shard-samples", "3", "--num-actors", "2", "--no-progress"]
    for m in rel:
        cmd += ["--manifest", m]
    tokenize = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert tokenize.returncode == 0, tokenize.stderr
    verify = subprocess.run(["uti", "verify", "out", "--address", ray_address], cwd=work, capture_output=True,
                            text=True, timeout=600)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "FAIL" not in verify.stdout and "PASS: every hard check passed" in verify.stdout, verify.stdout
    assert _imported(work) == [], "a process imported a shadow module from the working directory"

    clean, _ = reference_run(3)  # the same flags, run in this process (cwd: the repository): tests/conftest.py
    assert shard_bytes(work / "out") == shard_bytes(clean)
    assert (work / "out" / "errors.jsonl").read_bytes() == (clean / "errors.jsonl").read_bytes()


def test_the_cli_drops_a_shadowing_working_directory_from_its_import_path(tmp_path):
    """`python -m uti.cli` puts the working directory first on sys.path: modules, and plain folders
    (`train/` of an AudioCaps layout: with an editable install it becomes a namespace package that
    hides ours), named like our packages there do not replace ours."""
    work = _plant(tmp_path / "work", ("sharding", "ray_jobs", "verify", "demo", "bench"))
    (work / "train").mkdir()
    proc = subprocess.run([sys.executable, "-m", "uti.cli", "tokenize", "--help"], cwd=work, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--manifest" in proc.stdout and _imported(work) == []


def test_shadowing_entries_leave_sys_path_and_pythonpath(tmp_path, monkeypatch):
    """'' and '.' (the working directory) go from sys.path and PYTHONPATH (which local Ray workers
    inherit) when they hold a module named like ours; other entries and a clean directory stay."""
    from uti.cli import drop_working_directory_from_imports

    work = _plant(tmp_path / "work", ("verify",))
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", ["", str(work), str(other), *sys.path])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([".", str(other), str(work)]))
    drop_working_directory_from_imports()
    assert sys.path[0] == str(other) and "" not in sys.path and str(work) not in sys.path
    assert os.environ["PYTHONPATH"] == str(other)

    clean = tmp_path / "clean"
    clean.mkdir()
    monkeypatch.chdir(clean)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    monkeypatch.setenv("PYTHONPATH", ".")
    drop_working_directory_from_imports()
    assert sys.path[0] == "" and os.environ["PYTHONPATH"] == "."
