"""`uti tokenize` fits the cluster it runs on: default flags on a 2-CPU Ray finish, a request
that can never be scheduled fails at once naming the numbers and the flag, and a row of a modality the token
space has no range for is a per-sample error, not a crashed shard."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from ray_jobs.config import TokenizeConfig
from ray_jobs.job import run_tokenize
from ray_jobs.outputs import JobError
from ray_jobs.resources import Request, default_actors, waiting_reason
from tokenize_helpers import shard_bytes, wait_for

# Its own Ray: the scheduling tests need a 2-CPU instance (the shared one has 3), and the first test checks
# that a job which started Ray stops it again, so no Ray may be running when this module starts.
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("private_ray")]


@pytest.fixture(scope="module")
def reference(reference_run, private_ray):
    """The session's clean run of the same inputs (shard_samples=3, two actors on the shared Ray;
    tests/conftest.py), taken before this module's own Ray starts."""
    ref = reference_run(3)
    private_ray.stop()
    return ref


@pytest.fixture(scope="module")
def ray_two_cpus(reference):
    """Like `ray start --head --num-cpus 2`: two 1-CPU actors would hold every CPU and starve the reads."""
    import ray

    from uti.ray_local import connect

    owned = connect(None, num_cpus=2)  # address="local": never another run's cluster on this machine
    yield ray
    if owned:
        ray.shutdown()


@pytest.fixture(scope="module")
def manifests(tokenize_manifests):
    return tokenize_manifests  # the session's input set (tests/conftest.py): the reference run is of them


def test_a_bad_manifest_found_while_ray_starts_stops_that_ray(tmp_path):
    """The manifest is parsed while Ray starts (start-up at 600k rows); a manifest error still comes out as
    the job's error, and the Ray started for it is shut down again."""
    import ray

    from sharding.manifest import ManifestError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a:1", "dataset": "a", "modality": "audio"}\n')  # no path, no split
    before = ray.is_initialized()  # first in this file, so normally False: no module fixture has started Ray yet
    with pytest.raises((JobError, ManifestError)) as exc:
        run_tokenize(TokenizeConfig(manifests=(str(bad),), out=str(tmp_path / "out"), progress=False))
    assert "bad.jsonl" in str(exc.value) and "line 1" in str(exc.value), str(exc.value)
    assert ray.is_initialized() == before


def test_default_flags_on_a_two_cpu_cluster_finish(ray_two_cpus, manifests, reference, tmp_path):
    out = tmp_path / "out"
    started = time.time()
    job = run_tokenize(TokenizeConfig(manifests=tuple(manifests), out=str(out), shard_samples=3, progress=False))
    # CPU actors read their own chunks, so both CPUs get an actor and nothing waits for a CPU (the old
    # default of two actors plus read tasks waited forever here).
    assert job["actors"]["count"] == 2 and job["actors"]["reads_in"] == "actors"
    assert job["counts"]["samples"] == 10 and job["counts"]["errors"] == 3
    assert time.time() - started < 120
    # Timings named for what they are: the whole command, its start-up, and the codec actors' processing.
    t = job["throughput"]
    assert 0 < t["startup_seconds"] < t["wall_seconds"] and 0 < t["processing_seconds"] < t["wall_seconds"]
    assert job["driver_peak_rss_mb"] > 0
    # The output does not depend on the cluster: the same bytes as the reference run on the shared Ray.
    ref, _ = reference
    assert shard_bytes(out) == shard_bytes(ref)
    assert (out / "errors.jsonl").read_bytes() == (ref / "errors.jsonl").read_bytes()


def test_an_impossible_request_fails_at_once_with_the_numbers_and_the_flag(ray_two_cpus, manifests, tmp_path):
    started = time.time()
    with pytest.raises(JobError) as exc:  # read tasks (what GPU actors get) need CPU beside the actors
        run_tokenize(TokenizeConfig(manifests=tuple(manifests), out=str(tmp_path / "out"), shard_samples=3,
                                    num_actors=2, read_in="tasks", progress=False))
    message = str(exc.value)
    assert time.time() - started < 30
    for want in ("2 codec actors x 1 CPU", "--num-actors", "0.5 CPU for a read task", "= 2.5 CPU",
                 "has 2 CPU", "use --num-actors 1 or fewer"):
        assert want in message, (want, message)
    with pytest.raises(JobError) as exc:  # actors reading their own chunks: one CPU each, no more
        run_tokenize(TokenizeConfig(manifests=tuple(manifests), out=str(tmp_path / "out3"), shard_samples=3,
                                    num_actors=3, progress=False))
    message = str(exc.value)
    for want in ("3 codec actors x 1 CPU (--num-actors, --cpus-per-actor) = 3 CPU", "has 2 CPU",
                 "use --num-actors 2 or fewer"):
        assert want in message, (want, message)
    assert "read task" not in message


def test_defaults_fit_gpus_and_leave_cpu_for_reads():
    from ray_jobs.resources import resolve

    # CPU actors read their own chunks: one per CPU; GPU actors leave CPU for their read tasks.
    cpu = resolve(TokenizeConfig(manifests=("m",), out="o"), {"CPU": 8.0}, chunks=None)
    assert (cpu.num_actors, cpu.reads_in_actors, cpu.read_cpus) == (8, True, 0.0)
    tasks = resolve(TokenizeConfig(manifests=("m",), out="o", read_in="tasks"), {"CPU": 8.0}, chunks=None)
    assert (tasks.num_actors, tasks.reads_in_actors, tasks.read_cpus) == (7, False, 0.5)
    gpu = resolve(TokenizeConfig(manifests=("m",), out="o"), {"CPU": 8.0, "GPU": 2.0}, chunks=None)
    assert (gpu.num_actors, gpu.reads_in_actors, gpu.device) == (2, False, "cuda")
    assert default_actors(2, 0, gpus_per_actor=0, cpus_per_actor=1, read_cpus=0.5) == 1
    assert default_actors(3, 0, gpus_per_actor=0, cpus_per_actor=1, read_cpus=0.5) == 2
    assert default_actors(64, 16, gpus_per_actor=1, cpus_per_actor=1, read_cpus=0.5) == 16
    assert default_actors(8, 16, gpus_per_actor=1, cpus_per_actor=1, read_cpus=0.5) == 7  # CPUs bind first
    assert default_actors(1, 0, gpus_per_actor=0, cpus_per_actor=1, read_cpus=0.5) == 1  # refused by check_fits


def test_a_pending_read_task_says_what_it_waits_for():
    request = Request(num_actors=2, cpus_per_actor=1.0, gpus_per_actor=0.0, read_cpus=0.5)
    reason = waiting_reason(actors_pending=0, reads_pending=True, request=request,
                            available={"CPU": 0.0}, total={"CPU": 2.0})
    assert reason is not None and reason.startswith("waiting for 0.5 CPU for read tasks (the cluster has 0 of 2 CPU free")
    gpu = Request(num_actors=1, cpus_per_actor=1.0, gpus_per_actor=1.0, read_cpus=0.5)
    reason = waiting_reason(actors_pending=1, reads_pending=False, request=gpu,
                            available={"CPU": 4.0, "GPU": 0.0}, total={"CPU": 4.0, "GPU": 1.0})
    assert reason is not None and reason.startswith("waiting for 1 GPU for 1 codec actor(s)")
    assert waiting_reason(actors_pending=0, reads_pending=True, request=request,
                          available={"CPU": 1.0}, total={"CPU": 2.0}) is None


def test_rows_of_a_modality_without_a_range_are_per_sample_errors(ray_two_cpus, manifests, tmp_path):
    """Image-only codec config: the audio rows have no range, and captions (text) have none either."""
    config = tmp_path / "image_only.yaml"
    config.write_text("image:\n  kind: vqgan\n  weights: random:0\n  proc_size: 64\ndevice: cpu\n")
    out = tmp_path / "out"
    # Every row fails here, so the run ends with its error, after errors.jsonl is written; no shard crashed.
    with pytest.raises(JobError, match="no sample was tokenized"):
        run_tokenize(TokenizeConfig(manifests=tuple(manifests), out=str(out), config=str(config), shard_samples=3,
                                    num_actors=1, progress=False))
    errors = [json.loads(line) for line in (Path(out) / "errors.jsonl").read_text().splitlines()]
    by_reason: dict[str, list[dict]] = {}
    for e in errors:
        by_reason.setdefault(e["reason"], []).append(e)
    assert len(by_reason["no_audio_range"]) == 8  # every clotho row, the corrupt ones included: never read
    assert "has no audio range" in by_reason["no_audio_range"][0]["detail"]
    assert "has no text range" in by_reason["no_text_range"][0]["detail"]
    assert len(by_reason["no_text_range"]) == 4  # the readable llava images all have captions


def test_driver_peak_rss_is_its_own_not_its_parents(tmp_path):
    """Linux keeps getrusage's ru_maxrss across execve, so a driver started by a big process (the benchmark
    had torch loaded: 1.7 GB) reported its parent's peak as its own; the job's figure must be the driver's."""
    import subprocess
    import sys

    ballast = bytearray(700 * 1024 * 1024)  # make this process's peak certainly above 700 MB
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    out = subprocess.run([sys.executable, "-c", "from ray_jobs.scheduler import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True)
    del ballast
    assert 1 < float(out.stdout) < 300, out.stdout  # a bare python with numpy: tens of MB



def test_placed_actors_loading_their_codecs_are_not_taken_for_actors_waiting_for_cpu(ray_two_cpus, tmp_path, caplog):
    """On `ray start --num-cpus 2` two 1-CPU codec actors hold every CPU while they load their codecs (13-190 s
    for slow codecs): that is loading, not waiting for a CPU (the job warned `waiting for 1 CPU for 2 codec
    actor(s)`). Only an actor Ray has not placed waits for resources, and only it is named. A 1-CPU holder
    keeps the second actor unplaced, then lets it go; the checks run with no grace period."""
    import logging

    import ray

    from ray_jobs.job import _CodecActors
    from ray_jobs.scheduler import Waiting
    from uti.config import load_config

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ping.remote())
    cfg = TokenizeConfig(manifests=("m.jsonl",), out=str(tmp_path / "out"), progress=False)
    actors = _CodecActors.launch(cfg, load_config(None), chunks=None, modalities=("audio",), max_restarts=0)
    shown: list[str] = []
    try:
        assert len(actors.actors) == 2  # the default: one per CPU of the cluster (the holder's CPU included)
        wait_for(lambda: actors.starts.split(range(2))[0] == [0], timeout=120, what="codec actor 0 to be placed")
        with caplog.at_level(logging.WARNING, logger="ray_jobs.scheduler"):
            Waiting(actors.request, actors.starts, grace=0.0).check(starting=range(2), reads_pending=False,
                                                                    show=shown.append, loading_shown=True)
        assert actors.starts.split(range(2)) == ([0], [1])  # the holder has the CPU actor 1 needs
        assert [r.getMessage() for r in caplog.records] == [
            "waiting for 1 CPU for 1 codec actor(s) (the cluster has 0 of 2 CPU free; an autoscaling cluster may "
            "be adding nodes)"]
        assert re.fullmatch(r"waiting for 1 CPU for 1 codec actor\(s\) .*; 1 codec actor loading \(\d+ s\)",
                            shown[-1]), shown

        ray.kill(holder)  # its CPU goes to actor 1: both placed, loading, and every CPU is taken
        wait_for(lambda: actors.starts.split(range(2))[0] == [0, 1], timeout=120, what="codec actor 1 to be placed")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ray_jobs.scheduler"):
            Waiting(actors.request, actors.starts, grace=0.0).check(starting=range(2), reads_pending=False,
                                                                    show=shown.append, loading_shown=True)
        assert ray.available_resources().get("CPU", 0.0) == 0.0  # held by our own loading actors: not a shortage
        assert caplog.records == [] and re.fullmatch(r"2 codec actors loading \(\d+ s\)", shown[-1]), shown
        actors.wait_ready()  # and they do load: actor 0's token space is the job's
        assert actors.facts is not None and actors.facts.space.has_modality("audio")
    finally:
        actors.kill()
        ray.kill(holder)
