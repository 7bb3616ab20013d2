"""Object storage end to end against a real S3 endpoint on loopback (moto's server mode), issue 15.

The Ray cluster is started *before* the S3 settings enter this process's environment, so its raylets (and
every actor, task and Ray Train worker they start) never see them: the endpoint and credentials reach those
processes only through the job's runtime environment (uti.ray_local.connect), as on a real cluster.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from s3_helpers import FAKE_SECRET, start_s3_server, stop_s3_server
from uti.assets import synth_audio

pytestmark = pytest.mark.ray

SPLIT = "development"


def _make_clotho(root: Path) -> None:
    """Three short clips in the Clotho layout (tiny: the point is the storage, not the codec)."""
    (root / SPLIT).mkdir(parents=True)
    rows = []
    for i, (kind, seconds) in enumerate([("tone", 0.3), ("chirp", 0.4), ("noise", 0.3)]):
        name = f"clip {i}.wav"
        sf.write(root / SPLIT / name, synth_audio(kind, seconds=seconds, sample_rate=16000, seed=i), 16000)
        rows.append([name] + [f"a {kind} sound {i}.{j}" for j in range(5)])
    with open(root / f"clotho_captions_{SPLIT}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name"] + [f"caption_{j}" for j in range(1, 6)])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster whose processes have no AWS_* variable (started before the S3 env is set)."""
    import ray
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        mp.delenv(k)
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    finally:
        mp.undo()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def s3():
    server = start_s3_server()
    yield server
    stop_s3_server(server)


@pytest.fixture
def s3_env(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3


@pytest.fixture(scope="module")
def manifest(s3, tmp_path_factory):
    """`uti manifest --dataset clotho --root s3://bucket/media/clotho`: the media live in the bucket."""
    from sharding.manifest import make_manifest

    base = tmp_path_factory.mktemp("media")
    _make_clotho(base / "clotho")
    root = s3.upload(base / "clotho", "media/clotho")
    path = base / "clotho.jsonl"
    mp = pytest.MonkeyPatch()
    for k, v in s3.env.items():
        mp.setenv(k, v)
    try:
        summary = make_manifest("clotho", root, path)
    finally:
        mp.undo()
    assert summary["rows"] == 3 and summary["root"] == root
    return str(path)


def test_manifest_rows_name_objects_with_sizes_from_the_listing(manifest, s3):
    from sharding.manifest import read_manifest

    rows = read_manifest(manifest)
    sizes = {p: i["size"] for p, i in s3.fs().find(f"{s3.bucket}/media/clotho", detail=True).items()}
    for row in rows:
        assert row.path.startswith(s3.url("media/clotho/development/")), row.path
        assert row.bytes == sizes[row.path[len("s3://"):]]
        assert row.duration is None  # no media object is read at manifest time (only the listing)


def test_manifest_paths_stay_under_the_root_prefix(s3_env, tmp_path):
    """Paths from the data may not leave the root prefix: no '..', no absolute key, no URL to another bucket."""
    from sharding.manifest import build_manifest

    fs = s3_env.fs()
    root = f"{s3_env.bucket}/media/escape"
    fs.pipe_file(f"{s3_env.bucket}/media/secret.png", b"not for this dataset")
    fs.pipe_file(f"{root}/images/ok.png", b"png")
    entries = [{"id": str(i), "image": image, "conversations": [{"from": "gpt", "value": "c"}]}
               for i, image in enumerate(["images/ok.png", "../secret.png", "/media/secret.png",
                                          f"s3://{s3_env.bucket}/media/secret.png", "images/../../secret.png"])]
    fs.pipe_file(f"{root}/blip_laion_cc_sbu_558k.json", json.dumps(entries).encode())
    build = build_manifest("llava", s3_env.url("media/escape"))
    assert [r.path for r in build.rows] == [s3_env.url("media/escape/images/ok.png")]
    reasons = " | ".join(r.reason for r in build.rejected)
    assert len(build.rejected) == 4 and "'..'" in reasons and "absolute" in reasons and "URL" in reasons, reasons


def test_manifest_of_an_adapter_without_object_support_says_so(s3_env):
    from sharding.manifest import ManifestError, build_manifest

    with pytest.raises(ManifestError, match="not supported yet for dataset 'audiocaps'"):
        build_manifest("audiocaps", s3_env.url("media/clotho"))


@pytest.fixture(scope="module")
def codec_config(tmp_path_factory) -> str:
    """The default preset without the image codec: these tests hold audio and text only (faster actors)."""
    from importlib import resources

    import yaml

    data = yaml.safe_load(resources.files("uti.presets").joinpath("default.yaml").read_text())
    data.pop("image")
    path = tmp_path_factory.mktemp("config") / "uti.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _tokenize(manifest: str, out: str, address: str, config: str):
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    cfg = TokenizeConfig(manifests=(manifest,), out=out, shard_samples=1, num_actors=2, progress=False,
                         address=address, config=config)
    return run_tokenize(cfg)


@pytest.fixture(scope="module")
def tokenized(cluster, s3, manifest, codec_config):
    """`uti tokenize --out s3://bucket/tok` with 2 actors on the cluster."""
    mp = pytest.MonkeyPatch()
    for k, v in s3.env.items():
        mp.setenv(k, v)
    try:
        job = _tokenize(manifest, s3.url("tok"), cluster.address, codec_config)
    finally:
        mp.undo()
    return job


def test_tokenize_writes_shards_to_the_bucket_exactly_once(tokenized, s3):
    assert tokenized["counts"]["samples"] == 3 and tokenized["counts"]["errors"] == 0
    objects = s3.object_hashes("tok")
    names = {f"shards/{SPLIT}/shard-{i:06d}{ext}" for i in range(3) for ext in (".tar", ".json")}
    assert names <= set(objects)
    assert {"plan.json", "job.json", "token_space.json", "token_space.sha256", "errors.jsonl"} <= set(objects)
    assert not [k for k in objects if ".tmp" in k]  # staging copies stay local; nothing half-written
    for i in range(3):  # every index describes exactly the tar object next to it
        index = json.loads(s3.fs().cat_file(f"{s3.bucket}/tok/shards/{SPLIT}/shard-{i:06d}.json"))
        assert index["tar_sha256"] == objects[f"shards/{SPLIT}/shard-{i:06d}.tar"]


def test_rerun_after_losing_an_index_object_is_byte_identical(tokenized, cluster, s3_env, manifest, codec_config):
    """Index object = completion marker: a tar without one is redone, and the result is the same bytes."""
    before = s3_env.object_hashes("tok")
    fs = s3_env.fs()
    fs.rm(f"{s3_env.bucket}/tok/shards/{SPLIT}/shard-000001.json")  # as if the driver died before the index PUT
    job = _tokenize(manifest, s3_env.url("tok"), cluster.address, codec_config)
    assert job["counts"]["samples"] == 3
    after = s3_env.object_hashes("tok")
    shards = {k: v for k, v in before.items() if k.startswith("shards/")}
    assert {k: after[k] for k in shards} == shards


_OUTPUT: list[str] = []  # what the runs below printed, grepped for the secret at the end


@pytest.fixture(scope="module")
def local_outputs(tmp_path_factory):
    """Where verify reports and training runs go: grepped for the secret at the end."""
    return tmp_path_factory.mktemp("outputs")


def test_verify_reads_the_bucket(tokenized, cluster, s3_env, local_outputs, capfd):
    from verify.config import VerifyConfig
    from verify.run import run_verify

    result = run_verify(VerifyConfig(out=s3_env.url("tok"), address=cluster.address, report_dir=str(local_outputs / "report"),
                                     plots=False, decode_fraction=0.0, retokenize_fraction=0.0, loader_batches=1))
    failed = [c for c in result.report["checks"] if not c["ok"] and c.get("hard", True)]
    assert not failed, failed
    _OUTPUT.extend(capfd.readouterr())


def test_train_reads_the_bucket(tokenized, cluster, s3_env, local_outputs, capfd):
    """`uti train --data s3://...` with 2 Ray Train workers: they read their shares from the bucket."""
    from train.config import TrainConfig
    from train.runner import train

    result = train(TrainConfig(data=(s3_env.url("tok"),), out=str(local_outputs / "run"), split=SPLIT, num_workers=2,
                               seq_len=256, batch_size=1, warmup_steps=1, eval_texts=0, steps=2, overlong="split",
                               address=cluster.address))
    assert result.last_step == 2 and result.checkpoint is not None
    _OUTPUT.extend(capfd.readouterr())


def test_training_data_position_resumes_on_the_bucket(tokenized, s3_env):
    """The reader state saved mid-epoch continues with exactly the next batches, reading (and seeking in)
    the shard objects: what `uti train --resume` restores on each rank."""
    import torch

    from train.dataset import TokenBatches

    kw = dict(seq_len=128, batch_size=1, split=SPLIT, overlong="split", shuffle_buffer=2, rank=0, world_size=1)
    first = TokenBatches(s3_env.url("tok"), **kw)
    it = iter(first)
    head = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as in a checkpoint
    expected = [next(it) for _ in range(3)]
    resumed = TokenBatches(s3_env.url("tok"), **kw)
    resumed.load_state_dict(state)
    again = iter(resumed)
    for want in expected:
        got = next(again)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(head[0]["input_ids"], expected[0]["input_ids"])


def test_no_secret_in_any_output(tokenized, s3, local_outputs):
    """The fake secret was in the environment of every run above (and went to the Ray processes): it is in
    no object of OUT (job.json, plan.json, indexes, errors.jsonl), no file of the verify report or the
    training run, and nothing the runs printed."""
    if not _OUTPUT:
        pytest.skip("greps what the verify and train tests of this module wrote and printed: run the module")
    fs = s3.fs()
    keys = fs.find(f"{s3.bucket}/tok")
    assert any(k.endswith("job.json") for k in keys) and any(k.endswith("plan.json") for k in keys)
    for key in keys:
        assert FAKE_SECRET.encode() not in fs.cat_file(key), key
    files = [p for p in local_outputs.rglob("*") if p.is_file() and "/ray/" not in p.as_posix()]
    assert any(p.name == "report.json" for p in files) and any(p.name == "run_config.json" for p in files)
    for path in files:
        assert FAKE_SECRET.encode() not in path.read_bytes(), path
    assert _OUTPUT and not any(FAKE_SECRET in text for text in _OUTPUT)


def _cli_all(commands: list[list[str]], env_changes: dict[str, str | None]) -> list[tuple[list[str], int, str]]:
    """Run `uti ...` commands side by side (each is a fresh process, as a user's shell would start it)."""
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    procs = [(args, subprocess.Popen([sys.executable, "-m", "uti.cli", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)) for args in commands]
    return [(args, p.wait(timeout=120), p.stdout.read()) for args, p in procs]


@pytest.mark.parametrize("case", ["wrong_endpoint", "no_credentials"])
def test_unusable_store_is_one_clear_line(s3, manifest, tmp_path, case):
    env: dict[str, str | None] = dict(s3.env)
    commands = [["tokenize", "--manifest", manifest, "--out", s3.url("bad")]]
    if case == "wrong_endpoint":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
        env["AWS_MAX_ATTEMPTS"] = "1"
        expect = "AWS_ENDPOINT_URL"
        commands += [["verify", s3.url("bad"), "--report-dir", str(tmp_path / "r")],
                     ["train", "--data", s3.url("bad"), "--out", str(tmp_path / "run")]]
    else:
        env["AWS_ACCESS_KEY_ID"] = env["AWS_SECRET_ACCESS_KEY"] = None
        expect = "credentials"
    for args, code, output in _cli_all(commands, env):
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 2, (args, output)
        assert len(lines) == 1 and expect in lines[0] and "Traceback" not in output, (args, output)
        assert lines[0].startswith(f"uti {args[0]}: error: ") and s3.url("bad") in lines[0]
        assert FAKE_SECRET not in output


def test_missing_filesystem_names_the_extra(monkeypatch):
    import importlib

    from sharding.format import url_to_fs
    from sharding.storage import StorageError

    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is its mapping)
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    with pytest.raises(StorageError, match=r"uti\[s3\]"):
        url_to_fs("s3://bucket/out")


def test_storage_env_forwarding_never_conflicts_with_a_submitted_jobs_runtime_env(monkeypatch):
    """Under `ray job submit --runtime-env-json '{"env_vars": {"AWS_REGION": ...}}'` the entrypoint sees
    AWS_REGION too; forwarding it again would make Ray refuse to merge the two runtime envs."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from uti.ray_local import with_storage_env

    job_env = {"env_vars": {"AWS_REGION": "eu-west-1"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_env}))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    driver_env = with_storage_env({"worker_process_setup_hook": "train.ray_hooks.quiet_worker_logs"})
    assert driver_env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "AWS_REGION" not in driver_env["env_vars"]
    merged = _merge_runtime_env(job_env, driver_env)
    assert merged is not None and merged["env_vars"]["AWS_REGION"] == "eu-west-1"
