"""`uti tokenize` submitted with `ray job submit` to a cluster started with `ray start --head`, as users run it.

A second `ray start --address` node is not tested here: Ray 2.60 joins extra nodes only in its multi-node
mode, which swaps the loopback node IP for the machine's routable address, and these tests send traffic to
127.0.0.1 only. The two-node behaviour (a node leaving mid-job) is tested with ray.cluster_utils in
test_tokenize_cluster.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster_helpers import RayStartCluster, free_port

# Its own Ray: a `ray start` cluster in other processes, reached from outside with `ray job submit`.
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("private_ray")]


@pytest.fixture(scope="module")
def ray_cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="uti-ray-"))
    log_dir = temp_dir / "start-logs"
    log_dir.mkdir()
    cluster = RayStartCluster(temp_dir=temp_dir, gcs_port=free_port(), dashboard_port=free_port(), log_dir=log_dir)
    try:
        cluster.start_head(num_cpus=3)
        yield cluster
    finally:
        cluster.stop()


def _uti(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uti.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_ray_job_submit_tokenize_then_verify_from_outside(ray_cluster, tokenize_manifests, tmp_path):
    manifests = tokenize_manifests  # the session's input set (tests/conftest.py), written once
    out = tmp_path / "out"
    entry = ["uti", "tokenize", "--out", str(out), "--address", "auto"]
    for m in manifests:
        entry += ["--manifest", m]
    submitted = ray_cluster.job("submit", "--address", ray_cluster.dashboard_url, "--", *entry)
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs[-3000:]
    assert "succeeded" in logs
    job = json.loads((out / "job.json").read_text())
    assert job["counts"]["samples"] == 10 and job["counts"]["errors"] == 3
    assert sorted(p.name for p in (out / "shards").rglob("*.json")), "no committed shard"

    # The job ran on the cluster's own driver; verify then joins the same cluster from a user's shell.
    verified = _uti("verify", str(out), "--address", ray_cluster.gcs_address, env=ray_cluster.env, cwd=tmp_path)
    assert verified.returncode == 0, (verified.stdout + verified.stderr)[-3000:]
    report = json.loads((out / "verify" / "report.json").read_text())
    assert all(c["ok"] or c["skipped"] for c in report["checks"]), [c for c in report["checks"] if not c["ok"]]


def test_joining_a_token_cluster_without_token_mode_fails_at_once_naming_the_fix(ray_cluster, tokenize_manifests,
                                                                                tmp_path):
    """`ray start` turns token authentication on; left to Ray, a driver without RAY_AUTH_MODE=token retries
    forever, printing "InvalidAuthToken" every second; ours stops before joining and names the fix."""
    env = {k: v for k, v in ray_cluster.env.items() if k != "RAY_AUTH_MODE"}
    started = time.time()
    res = _uti("tokenize", "--manifest", tokenize_manifests[0], "--out", str(tmp_path / "out"), "--no-progress",
               "--address", ray_cluster.gcs_address, env=env, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout + res.stderr)[-2000:]
    assert "uses token authentication" in res.stderr and "export RAY_AUTH_MODE=token" in res.stderr, res.stderr
    assert ray_cluster.gcs_address in res.stderr
    assert time.time() - started < 120  # a process start and a 5 ms probe, not a wait on Ray's retries
