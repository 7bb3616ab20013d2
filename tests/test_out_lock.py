"""OUT has one writer at a time (sharding.outdir's lock): a second job refuses at once naming the first,
a dead owner's lock is taken over with a message, another host's lock is refused with how to remove it;
on object stores through a conditional PUT (a moto S3 server on loopback)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sharding.outdir import (LOCK_NAME, OutLock, OutLocked, acquire_lock, hold_lock, read_lock, release_lock)


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


def _plant(out: Path, lock: OutLock) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_bytes(lock.to_bytes())


def _someone(**changes) -> OutLock:
    base = OutLock(job="tokenize", host=socket.gethostname(), pid=os.getpid(), since="2026-01-02T03:04:05Z",
                   command="uti tokenize --manifest m.jsonl --out OUT", token="0123456789abcdef")
    return replace(base, **changes)


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = acquire_lock(out, job="tokenize")
    held = json.loads((out / LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["job"] == "tokenize"
    assert held["since"].endswith("Z") and held["command"]
    with pytest.raises(OutLocked) as info:
        acquire_lock(out, job="tokenize")
    msg = str(info.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and f"since {first.since}" in msg
    assert "give another --out" in msg and info.value.holder == first
    release_lock(out, first)
    assert not (out / LOCK_NAME).exists() and read_lock(out) is None
    release_lock(out, acquire_lock(out, job="tokenize"))  # free again


def test_a_dead_owners_lock_is_taken_over_with_a_message(tmp_path, caplog):
    out = tmp_path / "out"
    dead = _someone(pid=_dead_pid())
    _plant(out, dead)
    with caplog.at_level(logging.WARNING, logger="sharding.outdir"):
        mine = acquire_lock(out, job="tokenize")
    assert read_lock(out) == mine and mine.pid == os.getpid()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "took over the lock of a job that is gone" in warning and f"pid {dead.pid}" in warning
    release_lock(out, mine)


def test_a_reused_pid_or_a_reboot_is_a_dead_owner(tmp_path):
    """The pid runs (it is this process) but it is not the process that took the lock."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc: the owner's start time cannot be compared")
    live = acquire_lock(tmp_path / "probe", job="tokenize")
    assert live.gone() is False
    assert replace(live, process_start=live.process_start + 1).gone() is True
    assert replace(live, boot_id="another-boot").gone() is (live.boot_id is not None)
    release_lock(tmp_path / "probe", live)


def test_another_hosts_lock_is_refused_with_how_to_remove_it(tmp_path):
    out = tmp_path / "out"
    _plant(out, _someone(host="node-7.cluster", pid=_dead_pid()))
    with pytest.raises(OutLocked) as info:
        acquire_lock(out, job="tokenize")
    msg = str(info.value)
    assert "node-7.cluster" in msg and "another host" in msg and f"rm {out / LOCK_NAME}" in msg
    assert (out / LOCK_NAME).exists()  # never removed on a guess


def test_an_unreadable_lock_says_how_to_remove_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("{half a lo")
    with pytest.raises(OutLocked, match=rf"not a lock uti can read .*rm {out / LOCK_NAME}"):
        acquire_lock(out, job="tokenize")


def test_release_leaves_another_jobs_lock_alone(tmp_path, caplog):
    out = tmp_path / "out"
    mine = acquire_lock(out, job="tokenize")
    other = _someone(token="ffffffffffffffff")
    (out / LOCK_NAME).write_bytes(other.to_bytes())  # taken over by someone else meanwhile
    release_lock(out, mine)
    assert read_lock(out) == other


def test_a_lock_alone_leaves_no_folder_behind(tmp_path):
    """A job refused or failed before writing anything leaves OUT as it found it."""
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with hold_lock(out, job="tokenize"):
            assert (out / LOCK_NAME).exists()
            raise RuntimeError("the job failed")
    assert not out.exists()
    (tmp_path / "kept").mkdir()
    with hold_lock(tmp_path / "kept", job="tokenize"):
        pass
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


def _race(out: str, ready, go, results) -> None:
    ready.wait()
    go.wait()
    try:
        acquire_lock(out, job="tokenize")
        results.put("won")
        time.sleep(1.0)  # hold it while the others try
    except OutLocked:
        results.put("refused")


def test_of_jobs_starting_at_once_exactly_one_gets_the_lock(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 4
    ready, go, results = ctx.Barrier(n + 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "out"), ready, go, results)) for _ in range(n)]
    for p in procs:
        p.start()
    ready.wait()
    go.set()
    got = sorted(results.get(timeout=30) for _ in range(n))
    for p in procs:
        p.join(timeout=30)
    assert got == ["refused"] * (n - 1) + ["won"]


# ---- the tokenize job takes it --------------------------------------------------------------------------------
def _tokenize(manifests, out: Path, env=None) -> subprocess.CompletedProcess:
    cmd = ["uti", "tokenize", "--out", str(out), "--shard-samples", "1", "--num-actors", "1", "--no-progress"]
    for m in manifests:
        cmd += ["--manifest", m]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_a_second_tokenize_into_the_same_out_is_refused_at_once(tokenize_manifests, tmp_path):
    """The first job is this test process, holding the lock through the library; the second is the CLI.
    It refuses before starting Ray (RAY_TMPDIR stays empty) and before writing anything."""
    out = tmp_path / "out"
    first = acquire_lock(out, job="tokenize")
    ray_tmp = Path(tempfile.mkdtemp(prefix="uti-l-"))
    try:
        t0 = time.monotonic()
        proc = _tokenize(tokenize_manifests, out, env={"RAY_TMPDIR": str(ray_tmp)})
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"uti tokenize: error: {out} is in use: ") and "Traceback" not in proc.stderr
        assert f"pid {os.getpid()} on host {socket.gethostname()}, since {first.since}" in line
        assert list(ray_tmp.iterdir()) == [], "Ray was started by a job that was refused"
        assert time.monotonic() - t0 < 60
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME] and read_lock(out) == first
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        release_lock(out, first)


@pytest.mark.ray
def test_tokenize_takes_over_a_dead_jobs_lock_and_releases_it(reference_run, tokenize_manifests, tmp_path):
    """A job killed with -9 left its lock: the rerun (here of a complete OUT: nothing to do) says it takes it
    over, does its work, and leaves no lock."""
    ref, _ = reference_run(1)
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    dead = _someone(pid=_dead_pid())
    _plant(out, dead)
    proc = _tokenize(tokenize_manifests, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("nothing to do"), proc.stdout
    assert "took over the lock of a job that is gone" in proc.stderr and f"pid {dead.pid}" in proc.stderr
    assert not (out / LOCK_NAME).exists()


def test_verify_clean_orphans_waits_for_no_writer(tmp_path):
    """A running job's tar in flight looks like an orphan: --clean-orphans refuses while OUT is held."""
    from verify.dataset import clean_orphans

    out = tmp_path / "out"
    (out / "shards" / "train").mkdir(parents=True)
    (out / "shards" / "train" / "shard-000000.tar").write_bytes(b"being written")
    first = acquire_lock(out, job="tokenize")
    with pytest.raises(OutLocked, match="is in use"):
        clean_orphans(out)
    assert (out / "shards" / "train" / "shard-000000.tar").exists()
    release_lock(out, first)
    assert [o.kind for o in clean_orphans(out)] == ["tar_without_index"] and not (out / LOCK_NAME).exists()


# ---- object stores --------------------------------------------------------------------------------------------
def test_on_s3_a_second_writer_is_refused_and_a_dead_owner_taken_over(s3_env, caplog):
    out = s3_env.url("locked/out")
    first = acquire_lock(out, job="tokenize")
    raw = s3_env.fs().cat_file(f"{s3_env.bucket}/locked/out/{LOCK_NAME}")
    assert OutLock.from_bytes(raw) == first
    with pytest.raises(OutLocked, match=f"pid {os.getpid()} on host"):
        acquire_lock(out, job="tokenize")
    release_lock(out, first)
    assert not s3_env.fs().exists(f"{s3_env.bucket}/locked/out/{LOCK_NAME}")

    s3_env.fs().pipe_file(f"{s3_env.bucket}/locked/out/{LOCK_NAME}", _someone(pid=_dead_pid()).to_bytes())
    with caplog.at_level(logging.WARNING, logger="sharding.outdir"):
        mine = acquire_lock(out, job="tokenize")
    assert any("took over" in r.getMessage() for r in caplog.records)
    release_lock(out, mine)

    s3_env.fs().pipe_file(f"{s3_env.bucket}/locked/out/{LOCK_NAME}", _someone(host="node-7").to_bytes())
    with pytest.raises(OutLocked, match=rf"aws s3 rm s3://{s3_env.bucket}/locked/out/{LOCK_NAME}"):
        acquire_lock(out, job="tokenize")
