"""The cluster files parse and carry what the tokenize job relies on: image, GPU resources, entrypoint."""

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def _load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def _containers(spec):
    return spec["template"]["spec"]["containers"]


def test_raycluster_has_a_gpu_worker_group_on_the_uti_image():
    doc = _load("kuberay-raycluster.yaml")
    assert doc["kind"] == "RayCluster" and doc["spec"]["rayVersion"].startswith("2.60")
    head = doc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    gpu = next(g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    container = _containers(gpu)[0]
    assert container["image"].endswith("/uti:0.1.0")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    images = {c["image"] for g in doc["spec"]["workerGroupSpecs"] for c in _containers(g)} | {_containers(head)[0]["image"]}
    assert len(images) == 1, "every node must run the same image (same codecs, same token space)"


def test_rayjob_entrypoint_runs_uti_tokenize_against_its_cluster():
    doc = _load("kuberay-rayjob.yaml")
    assert doc["kind"] == "RayJob"
    entry = doc["spec"]["entrypoint"].split()
    assert entry[:2] == ["uti", "tokenize"] and "--address" in entry and entry[entry.index("--address") + 1] == "auto"
    assert "--manifest" in entry and "--out" in entry
    assert int(entry[entry.index("--num-actors") + 1]) == doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    worker = _containers(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])[0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == entry[entry.index("--gpus-per-actor") + 1]


def test_ray_up_yaml_declares_gpu_workers_and_a_cpu_free_head():
    doc = _load("ray-up-aws.yaml")
    types = doc["available_node_types"]
    assert types[doc["head_node_type"]]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert doc["docker"]["image"].endswith("/uti:0.1.0")
    assert any("--dashboard-host=127.0.0.1" in c for c in doc["head_start_ray_commands"])


def test_dockerfile_uses_the_pinned_ray_version():
    text = (CLUSTER / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0-py311-gpu" in text and "pip install" in text
    # The image installs the tested working set, not whatever the registry serves that day.
    assert "-c /home/ray/uti/constraints.txt" in text
