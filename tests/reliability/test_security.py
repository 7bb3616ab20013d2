"""Security defaults: a local Ray instance started by uti binds 127.0.0.1 only and runs no dashboard;
dataset paths stay inside their roots. (Checkpoints loaded with weights_only: test_faults_train.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharding.paths import PathEscapeError, find_file, resolve_inside

from .procs import descendants

pytestmark = [pytest.mark.reliability]
REPORT_GROUP = "security"

_START = r"""
import json, os, sys
import ray
if sys.argv[1] == "uti":
    from uti.ray_local import connect
    assert connect(None, num_cpus=1)
else:  # the control: what a bare ray.init does on this machine
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def _descendant_set(root: int) -> set[int]:
    return {root, *descendants(root)}


def _listening(pids: set[int]) -> list[tuple[str, str, int, str]]:
    """(protocol, address, port, process) of every TCP/UDP listening socket owned by `pids` (ss -ltunp)."""
    out = subprocess.run(["ss", "-H", "-l", "-t", "-u", "-n", "-p"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            fields = line.split()
            addr, _, port = fields[4].rpartition(":")
            name = (re.findall(r'\("([^"]+)"', line) or ["?"])[0]
            found.append((fields[0], addr.strip("[]"), int(port), name))
    return sorted(found)


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost"}


def test_local_ray_binds_loopback_only_and_runs_no_dashboard(record):
    """A local Ray started by uti (uti.ray_local.connect) listens on 127.0.0.1 only, without a dashboard."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed and psutil is not available: cannot list listening sockets")
    procs = {mode: subprocess.Popen([sys.executable, "-c", _START, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True) for mode in ("uti", "bare")}
    sockets = {}
    try:
        pids = {mode: json.loads(p.stdout.readline())["pid"] for mode, p in procs.items()}
        time.sleep(1.0)  # agents start listening shortly after init returns
        for mode, pid in pids.items():
            sockets[mode] = _listening(_descendant_set(pid))
    finally:
        for p in procs.values():
            try:
                p.communicate("\n", timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    ours, bare = sockets["uti"], sockets["bare"]
    if not ours and not bare:
        pytest.skip("ss shows no owner for Ray's sockets here (it needs root or CAP_NET_ADMIN for -p)")
    assert len(ours) >= 3, f"found too few Ray sockets to judge: {ours}"  # gcs, raylet, workers at least
    exposed = [s for s in ours if s[1] not in LOOPBACK]
    assert not exposed, f"uti's local Ray listens beyond loopback: {exposed}"
    assert not [s for s in ours if s[2] in (8265, 8266)], "a dashboard is listening"
    # The control shows the check has teeth: a bare ray.init listens on every interface here.
    bare_exposed = [s for s in bare if s[1] not in LOOPBACK]
    record("local Ray started by uti: listening sockets", group=REPORT_GROUP, outcome=(
        f"{len(ours)} TCP/UDP listeners of gcs/raylet/workers, all on 127.0.0.1; no dashboard port "
        f"(control, bare ray.init: {len(bare_exposed)} of {len(bare)} on other interfaces)"), lost=None,
        duplicates=None)


def test_dataset_paths_are_confined_to_their_root(tmp_path, record):
    """resolve_inside/find_file: '..', absolute paths, symlinks (file or folder) out of the root and NUL refused."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "ok.wav").write_bytes(b"x")
    (outside / "secret.wav").write_bytes(b"s")
    os.symlink(outside / "secret.wav", root / "leak.wav")
    os.symlink(outside, root / "leakdir")
    os.symlink(root / "sub" / "ok.wav", root / "alias.wav")  # a symlink that stays inside is fine
    os.symlink("loop", root / "loop")
    real = Path(os.path.realpath(root))
    assert resolve_inside(root, "sub/ok.wav") == real / "sub" / "ok.wav"
    assert resolve_inside(root, "alias.wav") == real / "sub" / "ok.wav"
    assert resolve_inside(root, str(root / "sub/ok.wav"), allow_absolute=True) == real / "sub" / "ok.wav"
    refused = {"../outside/secret.wav": "outside the dataset root", "sub/../../outside/secret.wav": "outside",
               str(outside / "secret.wav"): "is absolute", "leak.wav": "outside", "leakdir/secret.wav": "outside",
               "sub/ok.wav\x00.txt": "NUL byte", "": "empty"}
    for rel, why in refused.items():
        with pytest.raises(PathEscapeError, match=why):
            resolve_inside(root, rel)
    with pytest.raises(PathEscapeError, match="outside"):  # absolute allowed, but it must still land inside
        resolve_inside(root, str(outside / "secret.wav"), allow_absolute=True)
    with pytest.raises(PathEscapeError):
        find_file(root, ["leakdir/secret.wav"])
    assert find_file(root, ["loop", "sub/ok.wav"]) == real / "sub" / "ok.wav"  # a symlink loop is just absent
    record("dataset paths: '..', absolute, symlinked file/folder out, NUL, empty", group=REPORT_GROUP,
           outcome=f"{len(refused) + 1} escapes refused with PathEscapeError; in-root symlink and loop handled",
           lost=None, duplicates=None)
