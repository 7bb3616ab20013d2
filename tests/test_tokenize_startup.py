"""Start-up of `uti tokenize`: the codec actors load only the codecs the rows need
(the token space still names every configured codec, from remembered descriptors), they start while a
big manifest is still being read, and the tail of a shard is cut into smaller chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ray_jobs.chunks import TAPER_FLOOR, chunk_bounds
from ray_jobs.config import TokenizeConfig


# ---- descriptors of codecs that are not loaded ---------------------------------------------------------
def test_a_described_codec_is_not_loaded_and_names_the_same_space(default_space):
    """default_space loaded every codec in this session (and so remembered their descriptors): a process
    that loads only text and audio, describing the image codec, gets the same token space without
    importing diffusers at all."""
    code = ("import sys\nfrom uti.tokenizer import UnifiedTokenizer\n"
            "t = UnifiedTokenizer(modalities=('text', 'audio'), describe=('image',))\n"
            "print(t.space.id, t.image is None, 'diffusers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [default_space.id, "True", "False"]


def test_the_descriptor_key_follows_settings_code_and_weight_files(tmp_path):
    from uti.codecs.descriptors import descriptor_key
    from uti.config import AudioConfig, ImageConfig

    seed0 = descriptor_key("image", ImageConfig(weights="random:0"), 3)
    assert seed0 == descriptor_key("image", ImageConfig(weights="random:0"), 3)
    assert seed0 != descriptor_key("image", ImageConfig(weights="random:1"), 3)
    assert seed0 != descriptor_key("image", ImageConfig(weights="random:0", proc_size=128), 3)
    assert seed0 != descriptor_key("image", ImageConfig(weights="random:0"), 2)  # another token-space version
    # A hub cache the key cannot see is never trusted: such a codec is always loaded.
    assert descriptor_key("audio", AudioConfig(weights="pretrained"), 3) is None
    folder = tmp_path / "vq"
    folder.mkdir()
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x" * 10)
    first = descriptor_key("image", ImageConfig(weights=str(folder)), 3)
    assert first is not None and first == descriptor_key("image", ImageConfig(weights=str(folder)), 3)
    weights.write_bytes(b"y" * 11)  # new weights in the same folder
    assert descriptor_key("image", ImageConfig(weights=str(folder)), 3) != first


def test_a_damaged_or_contradicted_entry_is_not_trusted(tmp_path, monkeypatch, caplog, default_space):
    import dataclasses

    from uti.codecs import descriptors
    from uti.config import ImageConfig

    monkeypatch.setenv("UTI_CACHE_DIR", str(tmp_path))
    settings = ImageConfig(weights="random:7")
    real = default_space.codecs["image"]
    descriptors.remember("image", settings, 3, real)
    assert descriptors.cached("image", settings, 3) == real
    entry, = (tmp_path / "descriptors").glob("*.json")
    entry.write_text("{not json")
    with caplog.at_level("WARNING"):
        assert descriptors.cached("image", settings, 3) is None
    assert "damaged" in caplog.text and str(entry) in caplog.text
    descriptors.remember("image", settings, 3, real)
    other = dataclasses.replace(real, fingerprint="0" * 64)
    caplog.clear()
    with caplog.at_level("WARNING"):
        descriptors.remember("image", settings, 3, other)  # a real load that contradicts the entry wins
    assert "differs from the loaded codec" in caplog.text
    assert descriptors.cached("image", settings, 3) == other
    assert json.loads(entry.read_text())["fingerprint"] == "0" * 64


# ---- the tail of a shard -------------------------------------------------------------------------------
def test_a_shards_last_chunks_get_smaller_and_cover_every_row_once():
    cycle = (1.0, 2.0, 3.0, 4.5, 6.5, 13.0, 30.0)
    durations = [cycle[i % len(cycle)] for i in range(100)]
    bounds = chunk_bounds(durations, ["audio"] * len(durations), batch_seconds=60.0, max_images=64)
    assert [a for a, _ in bounds] == [0] + [b for _, b in bounds[:-1]] and bounds[-1][1] == len(durations)
    seconds = [sum(durations[a:b]) for a, b in bounds]
    assert all(s <= 60.0 or b - a == 1 for s, (a, b) in zip(seconds, bounds))
    assert seconds[0] == 60.0 and max(seconds[-4:]) < 60.0  # full chunks first, a tapered tail
    images = chunk_bounds([None] * 1000, ["image"] * 1000, batch_seconds=60.0, max_images=64)
    sizes = [b - a for a, b in images]
    assert sizes[0] == 64 and all(a >= b for a, b in zip(sizes, sizes[1:-1])), sizes  # the last one: what is left
    assert min(sizes[:-1]) == round(64 * TAPER_FLOOR) and sum(sizes) == 1000
    # A shard smaller than a chunk is still one chunk.
    assert chunk_bounds([1.0] * 5, ["audio"] * 5, batch_seconds=60.0, max_images=64) == [(0, 5)]


# ---- actors start while a big manifest is read ---------------------------------------------------------
def _big_manifest(path, rows: int, image) -> None:
    splits = ["train"] * 98 + ["val", "test"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": f"big:{i:09d}", "dataset": "big", "modality": "image", "path": str(image),
                                 "captions": [f"picture {i}"], "split": splits[i % 100]}) + "\n")


@pytest.mark.ray
def test_actors_start_while_a_big_manifest_is_read_and_not_for_a_small_one(ray_session, tmp_path, default_space,
                                                                             tokenize_manifests):
    from PIL import Image

    from ray_jobs.job import _plan_while_ray_starts, _RayState, absolute_paths
    from ray_jobs.resources import resolve
    from uti.assets import synth_image
    from uti.config import load_config

    small = TokenizeConfig(manifests=tuple(tokenize_manifests), out=str(tmp_path / "small"), progress=False)
    small, ucfg = absolute_paths(small, load_config(small.config))
    rows, _, early = _plan_while_ray_starts(small, ucfg, _RayState(small))
    assert early is None and len(rows) == 13  # planned at once: its actors wait for the plan (capped by chunks)

    image = tmp_path / "tiny.png"
    Image.fromarray(synth_image(size=32, seed=0)).save(image)
    manifest = tmp_path / "big.jsonl"
    _big_manifest(manifest, 300_000, image)
    cfg, ucfg = absolute_paths(TokenizeConfig(manifests=(str(manifest),), out=str(tmp_path / "out"), progress=False),
                               ucfg)
    rows, plan, early = _plan_while_ray_starts(cfg, ucfg, _RayState(cfg))
    try:
        assert len(rows) == 300_000 and plan.num_samples == 300_000
        assert early is not None, "the actors waited for a 300k-row manifest to be read"
        assert len(early.actors) == resolve(cfg, ray_session.cluster_resources(), chunks=None).num_actors
        assert early.modalities == ("image",)  # the manifest's first rows: images only
        assert early.wait_ready().facts.space.id == default_space.id
    finally:
        if early is not None:
            early.kill()


@pytest.mark.ray
def test_a_wrong_guess_of_a_big_manifests_modalities_restarts_the_actors(ray_session, tmp_path, tokenize_manifests,
                                                                         monkeypatch, caplog):
    """Early actors load the codecs of the manifest's first rows; when the plan holds another modality they
    are replaced by actors with every codec the rows need, and the job completes."""
    import ray_jobs.job as job_module
    from ray_jobs.job import run_tokenize
    from sharding.manifest import read_manifest

    rows = [r for m in tokenize_manifests for r in read_manifest(m)]
    mixed = tmp_path / "images-then-audio.jsonl"
    mixed.write_text("".join(r.to_json() + "\n" for r in sorted(rows, key=lambda r: r.modality != "image")))
    monkeypatch.setattr(job_module, "BIG_MANIFEST_BYTES", 0)  # every manifest takes the big-manifest path
    monkeypatch.setattr(job_module, "HEAD_BYTES", len(mixed.read_bytes().split(b"\n")[0]) + 2)  # its first row
    with caplog.at_level("INFO", logger="ray_jobs.job"):
        job = run_tokenize(TokenizeConfig(manifests=(str(mixed),), out=str(tmp_path / "out"), progress=False))
    assert "codecs: image)" in caplog.text and "also hold audio rows" in caplog.text
    assert job["actors"]["codecs_loaded"] == ["audio", "image", "text"]
    assert job["counts"]["samples"] == 10 and job["counts"]["errors"] == 3


def test_the_tail_starts_when_the_last_shard_is_cut_and_goes_longest_first(default_space):
    """A one-shard job is all tail: the scheduler knows the plan has no more shards as soon as it cuts the
    last one (it looked ahead), so its chunks go longest first instead of in plan order."""
    from ray_jobs.resources import Request
    from ray_jobs.scheduler import ChunkScheduler
    from sharding.manifest import ManifestRow
    from sharding.plan import make_plan

    cycle = (1.0, 2.0, 3.0, 4.5, 6.5, 13.0, 30.0)
    rows = [ManifestRow(id=f"t:{i:03d}", dataset="t", modality="audio", path=f"/x/{i}.wav", split="train",
                        duration=cycle[i % len(cycle)]) for i in range(70)]
    plan = make_plan(rows, manifest_sha256="0" * 64, target_samples=1000, target_seconds=None)
    by_id = {r.id: r for r in rows}
    scheduler = ChunkScheduler(cfg=TokenizeConfig(manifests=("m",), out="o", progress=False), plan=plan,
                               todo=list(plan.shards()), row_of=by_id.__getitem__, space=default_space, read_args={},
                               request=Request(num_actors=2, cpus_per_actor=1, gpus_per_actor=0, read_cpus=0.5),
                               actors=[None, None], first_info={}, command_started=0.0)
    scheduler._refill()
    assert scheduler.exhausted and scheduler._in_tail() and len(scheduler.pending) > 4
    costs = sorted((c.cost for c in scheduler.pending), reverse=True)
    assert [c.cost for c in scheduler.pending] != costs  # plan order is not longest first here


# ---- the local instance's head node ------------------------------------------------------------------------
def test_a_local_instance_starts_lean_and_its_workers_inherit_the_storage_environment():
    """`connect(None)` starts a head node without the autoscaler monitor (its exit held every local job's
    `ray.shutdown` for 1 s) and the log monitor (drivers run with log_to_driver=False). Object-store
    variables reach the workers by inheritance, not through a job runtime env (which made Ray start a new
    worker for every task beside the idle ones it had prestarted). Idle workers beyond one per CPU are kept
    for the next short task (a shard writer), not killed after 1 s."""
    code = ("import os, ray\nfrom uti.ray_local import connect\nconnect(None, num_cpus=1)\n"
            "procs = sorted(ray._private.worker._global_node.all_processes)\n"
            "print(' '.join(procs))\n"
            "print(ray.get(ray.remote(lambda: os.environ.get('AWS_REGION')).remote()))\n"
            "print(sorted(ray.get_runtime_context().runtime_env.get('env_vars') or {}))\n"
            # An actor holds the only CPU; a short task's idle worker must outlive Ray's 1 s idle kill.
            "import time\nactor = ray.remote(num_cpus=1)(type('A', (), {'f': lambda self: 1})).remote()\n"
            "ray.get(actor.f.remote())\npid = ray.remote(num_cpus=0)(lambda: os.getpid())\n"
            "first = ray.get(pid.remote())\ntime.sleep(3)\nprint(first == ray.get(pid.remote()))\nray.shutdown()")
    env = {**os.environ, "AWS_REGION": "test-region-1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    started, region, job_env_vars, same_worker = proc.stdout.split("\n")[:4]
    assert {"gcs_server", "raylet"} <= set(started.split()), started  # Ray's process-type names
    assert not {"monitor", "log_monitor"} & set(started.split()), started
    assert region == "test-region-1"  # the worker sees the driver's variable ...
    assert job_env_vars == "[]"  # ... without a job runtime env carrying it
    assert same_worker == "True"  # a shard's writer finds a worker waiting instead of starting one


def test_a_local_instances_processes_die_with_its_driver_killed_by_sigkill(ray_session):
    """A driver that started its local instance (connect(None), as `uti tokenize` does) is SIGKILLed: every
    process of that instance, the raylet's agents included (they outlived such a driver by ~3 minutes), is
    gone within 10 s; another instance on the machine (this session's) is untouched."""
    import time

    import psutil  # Ray's copy: ray is imported (ray_session)

    code = ("import time, ray\nimport psutil\nfrom uti.ray_local import connect\nconnect(None, num_cpus=1)\n"
            "for _ in range(300):  # the raylet starts its agents (and a first idle worker) as it comes up\n"
            "    procs = psutil.Process().children(recursive=True)\n"
            "    if sum(p.name().endswith(('DashboardAgent', 'RuntimeEnvAgent')) for p in procs) == 2: break\n"
            "    time.sleep(0.1)\n"
            "print(' '.join(str(p.pid) for p in procs), flush=True)\n"
            "time.sleep(300)\n")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline()
        assert line.strip(), driver.stderr.read()[-2000:] if driver.poll() is not None else "no pids printed"
        procs = []
        for pid in map(int, line.split()):
            try:
                procs.append(psutil.Process(pid))  # notes its start time: a reused pid is not this process
            except psutil.NoSuchProcess:
                pass
        names = " ".join(p.name() for p in procs)
        assert all(n in names for n in ("raylet", "gcs_server", "DashboardAgent", "RuntimeEnvAgent")), names
    finally:
        driver.kill()
        driver.wait()
    killed = time.monotonic()

    def alive(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    while time.monotonic() - killed < 10 and any(alive(p) for p in procs):
        time.sleep(0.2)
    left = [f"{p.pid} {p.name()}" for p in procs if alive(p)]
    for proc in procs:  # never leave them behind, whatever the verdict
        if alive(proc):
            proc.kill()
    assert not left, f"still running 10 s after the driver's SIGKILL: {left}"
    assert ray_session.get(ray_session.remote(lambda: 7).remote()) == 7
