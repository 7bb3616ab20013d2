"""`uti tokenize` on a two-node Ray cluster (ray.cluster_utils.Cluster): a worker node leaves mid-job."""

from __future__ import annotations

import threading

import pytest

from ray_jobs.config import TokenizeConfig
from ray_jobs.job import run_tokenize
from tokenize_helpers import shard_bytes, wait_for

# Its own Ray: a two-node ray.cluster_utils.Cluster, one of whose nodes is removed mid-job.
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("private_ray")]


@pytest.fixture(scope="module")
def reference(reference_run, private_ray):
    """The session's clean run of the same inputs with the same shard size (tests/conftest.py; made on the
    shared Ray if no module made it before), then no Ray running: this module starts its own cluster."""
    ref = reference_run(1)
    private_ray.stop()
    return ref


def test_removing_a_worker_node_mid_job_loses_no_shard(reference, tokenize_manifests, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    manifests = tokenize_manifests
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        cfg = TokenizeConfig(manifests=tuple(manifests), out=str(out), shard_samples=1, num_actors=2,
                             progress=False, address=cluster.address)
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(job=run_tokenize(cfg)))
        thread.start()
        # the node leaves mid-job: after the first shard is committed, while the job still runs
        wait_for(lambda: (out / "shards").exists() and any((out / "shards").rglob("*.json")) or not thread.is_alive(),
                 timeout=180, what="the first committed shard index under OUT/shards")
        assert thread.is_alive(), f"the job ended before the worker node could be removed mid-job: {result}"
        nodes_before = len([n for n in ray.nodes() if n["Alive"]])
        cluster.remove_node(worker)
        thread.join(timeout=400)
        assert "job" in result, "the job did not finish after the worker node was removed"
        assert nodes_before == 2
        job = result["job"]
        assert job["counts"]["samples"] == 10 and job["counts"]["errors"] == 3
        # The same bytes as an undisturbed run: no shard lost, duplicated or altered.
        ref, _ = reference
        assert shard_bytes(out) == shard_bytes(ref)
        assert (out / "errors.jsonl").read_bytes() == (ref / "errors.jsonl").read_bytes()
    finally:
        ray.shutdown()
        cluster.shutdown()
