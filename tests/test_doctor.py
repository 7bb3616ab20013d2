"""The environment: the pins that make a fresh install work, the compiled extensions we load, and
`uti doctor`, which names what is broken and the fix (and is what every import failure points to)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from cli_helpers import uti_in_process
from uti import doctor

ROOT = Path(__file__).resolve().parent.parent
BROKEN_LIB = ("Could not load this library: /venv/torchaudio/lib/libtorchaudio.so: undefined symbol: "
              "torch_exception_get_what_without_backtrace")


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("uti[")]
    return reqs


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


# -- the pins ----------------------------------------------------------------------------------------

def test_torch_and_torchaudio_are_pinned_as_one_exact_release():
    reqs = {_name(r): r for r in _requirements()}
    torch_pin = re.search(r"==\s*([\d.]+)\s*(?:,|$|#)", reqs["torch"])
    audio_pin = re.search(r"==\s*([\d.]+)\s*(?:,|$|#)", reqs["torchaudio"])
    assert torch_pin and audio_pin, (reqs["torch"], reqs["torchaudio"])
    assert torch_pin.group(1) == audio_pin.group(1), "torch and torchaudio must be the same release"
    pins = _constraints()
    assert pins["torch"] == pins["torchaudio"] == torch_pin.group(1)


def test_every_dependency_is_bounded_above_and_locked():
    """A new upstream release can only reach a user through a range we chose; and the constraints file
    (what the README installs against) names every package we require, so none resolves freely."""
    pins = _constraints()
    unbounded = [r for r in _requirements() if not re.search(r"<|==", r.split("#")[0])]
    assert not unbounded, f"no upper bound: {unbounded}"
    unlocked = [r for r in _requirements() if _name(r) not in pins]
    assert not unlocked, f"not in constraints.txt: {unlocked}"


def test_ci_runs_the_readme_test_command_in_a_new_venv():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
    assert command in ci.splitlines()
    assert "-c constraints.txt" in command
    assert ci.index("rm -rf .venv") < ci.index(command)


# -- what loads here ---------------------------------------------------------------------------------

def test_every_compiled_extension_we_depend_on_imports():
    checks = [doctor.check_torch_pair(), *doctor.check_compiled(), doctor.check_libsndfile()]
    broken = [c.line() for c in checks if c.status != doctor.OK]
    assert not broken, "\n".join(broken)


def test_doctor_reports_ok_for_the_base_set_here():
    res = uti_in_process("doctor", "--path", str(ROOT))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    for item in ("torch + torchaudio", "numpy (compiled)", "libsndfile", "m4a/webm decoder", "encodec", "snac",
                 "transformers", "diffusers", "ray", "CUDA", f"free space in {ROOT}", "dependencies"):
        line = next((ln for ln in lines if re.match(rf"^\S+\s+{re.escape(item)}:", ln)), None)
        assert line is not None and line.startswith("ok"), (item, res.stdout)
    assert lines[-1].startswith("everything the main job needs works here")


# -- what it says when something is broken -------------------------------------------------------------

def _run(code: str, *, pythonpath: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    if pythonpath is not None:
        full["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [full.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=300)


def test_a_hidden_package_is_named_with_its_fix_and_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "snac", None)  # `import snac` now raises ImportError, as when it is missing
    res = uti_in_process("doctor")
    assert res.returncode == 1, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.split()[1:2] == ["snac:"])
    assert line.startswith("FAIL") and "python3 -m pip install -c constraints.txt snac" in line, line
    assert "problem(s) the main job cannot run with: snac" in res.stdout


def _fake_torchaudio(root: Path, *, init: str) -> Path:
    pkg = root / "torchaudio"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init)
    return root


def test_a_torchaudio_that_does_not_load_names_the_pair_and_every_command_points_at_doctor(tmp_path):
    """A fresh process whose torchaudio raises what a mismatched build raises at import: `uti doctor`, a
    command that needs the torch stack, and the demo, one after the other in that process."""
    fake = _fake_torchaudio(tmp_path / "site", init=f"raise OSError({BROKEN_LIB!r})\n")
    runs = [["doctor"], ["tokenspace", "build", "--out", str(tmp_path / "ts")], ["demo", "--out", str(tmp_path / "demo")]]
    code = ("import sys\nfrom uti.cli import main\n"
            f"for argv in {runs!r}:\n"
            "    rc = main(argv)\n"
            "    sys.stdout.flush(); sys.stderr.flush()\n"
            "    print(f'@@rc {rc}', flush=True); print('@@end', file=sys.stderr, flush=True)\n")
    res = _run(code, pythonpath=fake)
    outs, errs = res.stdout.split("@@rc ")[1:], res.stderr.split("@@end")[:3]
    rcs = [int(o.split()[0]) for o in outs]
    assert rcs == [1, 2, 2], (rcs, res.stdout[-2000:], res.stderr[-2000:])
    line = next(ln for ln in res.stdout.splitlines() if "torch + torchaudio:" in ln)
    assert line.startswith("FAIL") and "undefined symbol" in line
    assert re.search(r"fix: python3 -m pip install torch==[\d.]+ torchaudio==[\d.]+", line), line
    # a command that needs the torch stack: one line naming the failure and `uti doctor`, no traceback
    build_err = errs[1].strip()
    assert "Traceback" not in build_err and len(build_err.splitlines()) == 1, build_err
    assert "libtorchaudio.so" in build_err and "run `uti doctor`" in build_err
    demo_err = errs[2].strip()
    assert "Traceback" not in demo_err and "cannot run the demo: torch + torchaudio" in demo_err, demo_err
    assert "uti doctor" in demo_err
    assert not (tmp_path / "demo").exists(), "the demo must stop before it writes anything"


def test_a_torchaudio_of_another_release_is_refused_by_version(monkeypatch):
    import types

    import torch

    fake = types.ModuleType("torchaudio")
    fake.__version__ = "9.9.1"
    ext = types.ModuleType("torchaudio._extension")
    ext._IS_TORCHAUDIO_EXT_AVAILABLE = True
    monkeypatch.setitem(sys.modules, "torchaudio", fake)
    monkeypatch.setitem(sys.modules, "torchaudio._extension", ext)
    check = doctor.check_torch_pair()
    base = torch.__version__.split("+")[0]
    assert check.broken and f"torch {base} with torchaudio 9.9.1: not a matched pair" in check.detail, check
    assert check.fix == f"python3 -m pip install torch=={base} torchaudio=={base}"


def test_a_command_whose_module_does_not_import_says_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "verify.cli", None)
    res = uti_in_process("verify", "somewhere")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("uti verify: error: cannot load this command (verify.cli:register)")
    assert "run `uti doctor`" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # the other commands still work
    ok = uti_in_process("tokenspace", "codecs", "--json")
    assert ok.returncode == 0 and '"kind": "encodec"' in ok.stdout, ok.stderr


def test_credentials_are_found_by_source_and_never_printed(monkeypatch):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETzz"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAZZZZDOCTORTESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://someone:hunter2@127.0.0.1:9000")
    res = uti_in_process("doctor", "--json")
    assert "'env' provider" in res.stdout and "endpoint http://127.0.0.1:9000" in res.stdout, res.stdout
    for value in (secret, "AKIAZZZZDOCTORTESTKEY", "hunter2", "someone"):
        assert value not in res.stdout + res.stderr


def test_credentials_absent_warn_and_do_not_query_instance_metadata(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    checks = doctor.check_object_storage(cloud_metadata=False)
    creds = next(c for c in checks if c.item == "s3 credentials")
    assert creds.status == doctor.WARN and "instance metadata not queried" in creds.detail
    assert not creds.required


def test_too_little_free_space_fails(tmp_path):
    res = uti_in_process("doctor", "--path", str(tmp_path / "not-yet" / "out"), "--min-free-gb", "1e9")
    assert res.returncode == 1
    line = next(ln for ln in res.stdout.splitlines() if "free space in" in ln)
    assert line.startswith("FAIL") and f"filesystem of {tmp_path}" in line, line


@pytest.mark.parametrize("exc, expected", [
    (ImportError("No module named 'snac'"), True),
    (OSError(BROKEN_LIB), True),
    (RuntimeError("The actor died: OSError: " + BROKEN_LIB), True),
    (FileNotFoundError(2, "No such file or directory", "data/x.wav"), False),
    (ValueError("bad sample rate 0 in clip 3"), False),
])
def test_environment_failures_are_told_from_data_errors(exc, expected):
    assert doctor.is_environment_failure(exc) is expected
    assert ("uti doctor" in doctor.doctor_hint(exc)) is expected
