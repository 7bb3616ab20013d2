"""Object storage end to end against a real S3 endpoint on loopback (moto's server mode).

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

from s3_helpers import FAKE_SECRET
from uti.assets import synth_audio

# Its own Ray: a cluster whose processes never saw the AWS_* variables (the shared instance might have).
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("private_ray")]

SPLIT = "development"


def _make_clotho(root: Path) -> None:
    """Three short clips in the Clotho layout (tiny: the point is the storage, not the codec)."""
    from demo.data import ClothoClip, write_clotho_split

    write_clotho_split(root, SPLIT, [
        ClothoClip(name=f"clip {i}.wav", captions=tuple(f"a {kind} sound {i}.{j}" for j in range(5)),
                   audio=synth_audio(kind, seconds=seconds, sample_rate=16000, seed=i), rate=16000)
        for i, (kind, seconds) in enumerate([("tone", 0.3), ("chirp", 0.4), ("noise", 0.3)])])


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


@pytest.fixture(scope="module")
def bucket_run(tokenized, cluster, s3, local_outputs):
    """`uti train --data s3://...` with 2 Ray Train workers for 4 steps, checkpointed at step 2 and 4 (the
    uninterrupted run that the resume test below compares with). RUN is a local folder."""
    from train.config import TrainConfig
    from train.runner import train

    mp = pytest.MonkeyPatch()
    for k, v in s3.env.items():
        mp.setenv(k, v)
    try:
        result = train(TrainConfig(data=(s3.url("tok"),), out=str(local_outputs / "run"), split=SPLIT, num_workers=2,
                                   seq_len=256, batch_size=1, warmup_steps=1, eval_texts=0, steps=4, checkpoint_every=2,
                                   overlong="split", shuffle_buffer=2, address=cluster.address))
    finally:
        mp.undo()
    return result


def test_train_reads_the_bucket(bucket_run):
    """`uti train --data s3://...` with 2 Ray Train workers: they read their shares from the bucket."""
    assert bucket_run.last_step == 4 and bucket_run.checkpoint is not None
    _OUTPUT.append("")  # the no-secret test below greps the run folder this made


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


# ---- --storage-options, driver SIGKILL, train --resume, orphans, multipart ---------------------------------
def _storage_options_file(s3, path: Path) -> Path:
    from s3_helpers import FAKE_KEY_ID

    path.write_text(json.dumps({"key": FAKE_KEY_ID, "secret": FAKE_SECRET,
                                "client_kwargs": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"}}))
    return path


def _no_aws_env() -> dict[str, str | None]:
    """The user's shell without a single AWS_* variable: only --storage-options can reach the bucket."""
    return {k: None for k in os.environ if k.startswith("AWS_")}


@pytest.fixture(scope="module")
def six_by_options(cluster, s3, manifest_six, codec_config, tmp_path_factory):
    """`uti tokenize` of six clips into s3://bucket/six with --storage-options @FILE and no AWS_* variable in
    its environment (nor in the cluster's): the read tasks and codec actors reach the bucket only through the
    options. Also the uninterrupted reference of the SIGKILL test. Returns (OUT, what it printed)."""
    options = _storage_options_file(s3, tmp_path_factory.mktemp("opts") / "opts.json")
    ((args, code, output),) = _cli_all([_six_args(manifest_six, s3.url("six"), cluster.address, codec_config, options)],
                                       _no_aws_env())
    assert code == 0, output
    return s3.url("six"), output


def _six_args(manifest: str, out: str, address: str, config: str, options: Path) -> list[str]:
    return ["tokenize", "--manifest", manifest, "--out", out, "--config", config, "--num-actors", "2",
            "--shard-samples", "1", "--address", address, "--no-progress", "--storage-options", f"@{options}"]


def test_storage_options_alone_reach_actors_and_verify(six_by_options, cluster, s3, tmp_path, monkeypatch, capfd):
    """`--storage-options` (@file for tokenize, inline JSON for verify) with no AWS_* variable anywhere:
    tokenize's read tasks and actors and verify's scan tasks read the bucket (train: the resume test below);
    the secret is in no object of OUT, no file of the report and nothing the commands printed."""
    from uti.cli import main

    out, printed = six_by_options
    options = _storage_options_file(s3, tmp_path / "opts.json")
    for k in _no_aws_env():
        monkeypatch.delenv(k)
    monkeypatch.setenv("UTI_STORAGE_OPTIONS", "")  # `main` sets it from the flag; restored afterwards
    report = tmp_path / "report"
    code = main(["verify", out, "--address", cluster.address, "--report-dir", str(report), "--no-plots",
                 "--decode-fraction", "0", "--retokenize-fraction", "0", "--loader-batches", "1",
                 "--storage-options", options.read_text()])
    output = "".join(capfd.readouterr())
    assert code == 0, output
    assert len(s3.fs().glob(f"{s3.bucket}/six/shards/{SPLIT}/*.json")) == 6
    assert json.loads((report / "report.json").read_text())["failed_hard"] == []
    fs = s3.fs()
    for key in fs.find(f"{s3.bucket}/six"):
        assert FAKE_SECRET.encode() not in fs.cat_file(key), key
    files = [p for p in report.rglob("*") if p.is_file()]
    assert any(p.name == "report.json" for p in files)
    for path in files:
        assert FAKE_SECRET.encode() not in path.read_bytes(), path
    assert FAKE_SECRET not in printed and FAKE_SECRET not in output


def test_bad_storage_options_is_one_line_naming_the_flag(s3, tmp_path):
    bad = f'{{"secret": "{FAKE_SECRET}", "key": }}'  # invalid JSON holding a secret: never echoed
    ((args, code, output),) = _cli_all([["verify", s3.url("tok"), "--storage-options", bad]], {})
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "--storage-options" in lines[0] and "not valid JSON" in lines[0], output
    assert FAKE_SECRET not in output and "Traceback" not in output


@pytest.fixture(scope="module")
def manifest_six(s3, tmp_path_factory):
    """Six clips (one shard each): enough shards for a driver to be killed between two of them."""
    from sharding.manifest import make_manifest

    base = tmp_path_factory.mktemp("media6")
    root_dir = base / "clotho"
    (root_dir / SPLIT).mkdir(parents=True)
    rows = []
    for i in range(6):
        name = f"c{i}.wav"
        sf.write(root_dir / SPLIT / name, synth_audio("chirp", seconds=0.5, sample_rate=16000, seed=i), 16000)
        rows.append([name] + [f"sound {i}.{j}" for j in range(5)])
    with open(root_dir / f"clotho_captions_{SPLIT}.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["file_name"] + [f"caption_{j}" for j in range(1, 6)], *rows])
    root = s3.upload(root_dir, "media/six")
    path = base / "six.jsonl"
    mp = pytest.MonkeyPatch()
    for k, v in s3.env.items():
        mp.setenv(k, v)
    try:
        make_manifest("clotho", root, path)
    finally:
        mp.undo()
    return str(path)


def _start_incomplete_upload(s3, key: str) -> str:
    """A multipart upload that was started (one part sent) and never completed: a writer killed mid-upload."""
    fs = s3.fs()
    upload = fs.call_s3("create_multipart_upload", Bucket=s3.bucket, Key=key)
    fs.call_s3("upload_part", Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024)
    return upload["UploadId"]


def _uploads(s3, prefix: str) -> list[str]:
    page = s3.fs().call_s3("list_multipart_uploads", Bucket=s3.bucket, Prefix=prefix)
    return [u["Key"] for u in page.get("Uploads", [])]


def test_driver_sigkill_on_a_bucket_then_rerun_is_byte_identical(six_by_options, cluster, s3, manifest_six, codec_config,
                                                                   tmp_path):
    """`uti tokenize` bucket to bucket is SIGKILLed after its first shard is committed; the same command again
    finishes with shards byte-identical to an uninterrupted run, and removes (and reports) the orphans of the
    shards it redoes: a tar without index and an incomplete multipart upload."""
    import signal
    import time

    from tokenize_helpers import wait_for

    options = _storage_options_file(s3, tmp_path / "opts.json")
    args = _six_args(manifest_six, s3.url("kill"), cluster.address, codec_config, options)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    fs = s3.fs()
    shards = f"{s3.bucket}/kill/shards/{SPLIT}"
    proc = subprocess.Popen([sys.executable, "-m", "uti.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def committed_one() -> bool:
            fs.invalidate_cache()
            return bool(fs.exists(f"{s3.bucket}/kill/plan.json") and fs.glob(f"{shards}/*.json"))

        wait_for(lambda: proc.poll() is not None or committed_one(), timeout=180, step=0.02,
                 what="plan.json and a first committed shard index in the bucket")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    fs.invalidate_cache()
    committed = {p.rsplit("/", 1)[1][:-5] for p in fs.glob(f"{shards}/*.json")}
    assert committed and not fs.exists(f"{s3.bucket}/kill/job.json"), committed  # killed mid-run
    # Ray ends the dead driver's actors; wait until nothing writes any more before adding the orphans
    time.sleep(3)
    fs.invalidate_cache()
    committed = {p.rsplit("/", 1)[1][:-5] for p in fs.glob(f"{shards}/*.json")}
    # What an interrupted writer leaves, whatever the moment of the kill: a tar without its index (a committed
    # shard's index removed, as if its PUT never happened; and a half tar for a shard not reached), and a
    # multipart upload never completed.
    victim = sorted(committed)[0]
    fs.rm(f"{shards}/{victim}.json")
    _start_incomplete_upload(s3, f"kill/shards/{SPLIT}/{victim}.tar")
    left = sorted({f"shard-{i:06d}" for i in range(6)} - committed)
    if left:
        fs.pipe_file(f"{shards}/{left[-1]}.tar", b"half a tar")
    fs.pipe_file(f"{s3.bucket}/kill/shards/notes.txt", b"not ours: never deleted")

    ((_, code, output),) = _cli_all([args], {k: None for k in os.environ if k.startswith("AWS_")})
    assert code == 0, output
    job = json.loads(fs.cat_file(f"{s3.bucket}/kill/job.json"))
    removed = {(o["url"].rsplit("/", 1)[1], o["kind"]) for o in job["orphans_removed"]}
    assert {(f"{victim}.tar", "tar_without_index"), (f"{victim}.tar", "incomplete_upload")} <= removed, removed
    assert "orphan" in output and f"{victim}.tar" in output
    assert not _uploads(s3, "kill/")
    assert fs.cat_file(f"{s3.bucket}/kill/shards/notes.txt") == b"not ours: never deleted"

    ref = {k: v for k, v in s3.object_hashes("six").items() if k.startswith("shards/")}  # uninterrupted run
    got = {k: v for k, v in s3.object_hashes("kill").items() if k.startswith("shards/") and k != "shards/notes.txt"}
    assert len(ref) == 12 and got == ref


def test_verify_reports_orphans_and_clean_orphans_deletes_only_them(tokenized, cluster, s3, tmp_path, capsys):
    """A copy of OUT with a tar without index and an incomplete multipart upload: `uti verify` reports both,
    `uti verify --clean-orphans` deletes exactly these and nothing else under OUT."""
    from uti.cli import main

    fs = s3.fs()
    for key in fs.find(f"{s3.bucket}/tok"):
        fs.copy(key, key.replace("/tok/", "/orph/", 1))
    shards = f"{s3.bucket}/orph/shards/{SPLIT}"
    fs.rm(f"{shards}/shard-000001.json")  # its tar is now an orphan
    _start_incomplete_upload(s3, f"orph/shards/{SPLIT}/shard-000002.tar")
    fs.pipe_file(f"{s3.bucket}/orph/shards/{SPLIT}/README.txt", b"not a shard")
    fs.pipe_file(f"{s3.bucket}/orph/other.tar", b"not under shards/")
    keep = {k for k in fs.find(f"{s3.bucket}/orph")} - {f"{shards}/shard-000001.tar"}
    options = _storage_options_file(s3, tmp_path / "opts.json")
    base = ["verify", s3.url("orph"), "--address", cluster.address, "--no-plots", "--decode-fraction", "0",
            "--retokenize-fraction", "0", "--loader-batches", "0", "--storage-options", f"@{options}"]
    capsys.readouterr()
    code = main(base + ["--report-dir", str(tmp_path / "r1")])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert code == 1 and "shard_integrity" in report["failed_hard"], report["failed_hard"]
    assert "tar_without_index" in json.dumps(report) and "incomplete multipart upload" in err, err
    assert fs.exists(f"{shards}/shard-000001.tar") and _uploads(s3, "orph/")  # reporting deletes nothing

    main(base + ["--report-dir", str(tmp_path / "r2"), "--clean-orphans"])
    out = capsys.readouterr().out
    assert "shard-000001.tar (tar_without_index)" in out and "shard-000002.tar (incomplete_upload)" in out, out
    fs.invalidate_cache()
    assert not fs.exists(f"{shards}/shard-000001.tar") and not _uploads(s3, "orph/")
    assert {k for k in fs.find(f"{s3.bucket}/orph") if "/verify/" not in k} >= keep


def test_train_resume_on_the_bucket_equals_an_uninterrupted_run(bucket_run, cluster, s3, tmp_path, monkeypatch,
                                                                   capfd):
    """The 4-step bucket run, stopped after step 2 and continued with `uti train --out RUN --resume` (RUN is a
    local folder: run folders are local paths; --data is on the bucket), gives the same batches and losses at
    steps 3-4. The resumed run has no AWS_* variable, only --storage-options: the Ray Train workers read the
    bucket through them, and the secret is in no file of the run and nothing it printed."""
    import shutil

    from train.metrics import read_metrics
    from uti.cli import main

    full = bucket_run.run
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed, ignore=shutil.ignore_patterns("ray"))
    shutil.rmtree(resumed / "checkpoints" / "step-000004")  # as if the run had stopped after step 2
    metrics = resumed / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:2]))
    options = _storage_options_file(s3, tmp_path / "opts.json")
    for k in _no_aws_env():
        monkeypatch.delenv(k)
    monkeypatch.setenv("UTI_STORAGE_OPTIONS", "")  # `main` sets it from the flag; restored afterwards
    capfd.readouterr()
    code = main(["train", "--out", str(resumed), "--resume", "--address", cluster.address,
                 "--storage-options", f"@{options}"])
    output = "".join(capfd.readouterr())
    assert code == 0, output
    assert "trained steps 3..4" in output, output
    a = {r["step"]: r for r in read_metrics(full)}
    b = read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for r in b[2:]:
        assert r["batch_crc"] == a[r["step"]]["batch_crc"], f"step {r['step']}: different data"
        assert abs(r["loss"] - a[r["step"]]["loss"]) < 1e-3, (r["step"], r["loss"], a[r["step"]]["loss"])
    assert FAKE_SECRET not in output
    for path in [p for p in resumed.rglob("*") if p.is_file() and "/ray/" not in p.as_posix()]:
        assert FAKE_SECRET.encode() not in path.read_bytes(), path


def test_a_shard_larger_than_one_part_is_a_multipart_upload_byte_identical(s3, tmp_path, monkeypatch):
    """With a 5 MiB part size (S3's minimum, through --storage-options) a ~13 MB shard is uploaded as three
    parts (at most two in flight) and the object is byte-identical to the same shard written to local disk."""
    import hashlib

    import numpy as np

    from sharding.storage import configure_storage_options, upload_settings
    from sharding.writer import write_shard
    from test_shards import SPACE, make_sample

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("UTI_STORAGE_OPTIONS", "")  # restored (unset) after the test
    assert upload_settings().part_bytes == 32 * 2**20 and upload_settings().concurrency == 4  # the defaults
    options = json.loads(_storage_options_file(s3, tmp_path / "opts.json").read_text())
    configure_storage_options(json.dumps({**options, "default_block_size": 5 * 2**20, "max_concurrency": 2}))
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        sample = make_sample(SPACE, 3 * i + 2)  # text-only samples with ~4.4 MB of text IDs each
        sample["text"] = (SPACE.range("text").start + rng.integers(0, 256, size=1_100_000)).astype(np.uint32)
        sample["meta"]["caption_token_lengths"] = [int(sample["text"].shape[0])]
        samples.append(sample)
    url = s3.url("multipart")
    write_shard(url, split="train", shard="shard-000000", token_space=SPACE, samples=samples)
    write_shard(tmp_path / "local", split="train", shard="shard-000000", token_space=SPACE, samples=samples)
    local = (tmp_path / "local" / "shards" / "train" / "shard-000000.tar").read_bytes()
    key = "multipart/shards/train/shard-000000.tar"
    head = s3.fs().call_s3("head_object", Bucket=s3.bucket, Key=key)
    assert len(local) > 2 * 5 * 2**20 and head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts
    assert hashlib.sha256(s3.fs().cat_file(f"{s3.bucket}/{key}")).digest() == hashlib.sha256(local).digest()


def test_training_read_ahead_gives_the_same_batches_within_its_bound(tokenized, s3_env):
    """`uti train --data s3://...`: each rank's stream fetches the next shards' byte ranges ahead (at most
    PrefetchLimits.shards held); the batches are the same as without read-ahead, and the ranges read ahead
    are the ones the reader then used."""
    import numpy as np

    from sharding.prefetch import DEFAULT_LIMITS, PrefetchLimits
    from train.config import TrainConfig
    from train.runner import load_input_space
    from train.sequences import Specials
    from train.stream import BatchStream

    url = s3_env.url("tok")
    space = load_input_space(url)
    cfg = TrainConfig(data=(url,), out="unused", seq_len=128, batch_size=1, split=SPLIT, overlong="split",
                      shuffle_buffer=2)

    def batches(prefetch):
        stream = BatchStream([{"out": url, "token_space_id": space.id}], cfg=cfg, sp=Specials.from_space(space),
                             vocab_size=space.vocab_size, rank=0, world_size=1, prefetch=prefetch)
        return stream, [stream.next_batch() for _ in range(8)]  # several epochs of the 3 one-sample shards

    _, direct = batches(PrefetchLimits(shards=0))
    for limits in (DEFAULT_LIMITS, PrefetchLimits(shards=1)):
        stream, ahead = batches(limits)
        for a, b in zip(direct, ahead):
            assert all(np.array_equal(a[k], b[k]) for k in a)
        p = stream.prefetcher
        assert p is not None and p.hits >= 3 and p.peak_held <= limits.shards, (p.hits, p.peak_held)
    assert DEFAULT_LIMITS.shards == 2 and stream.prefetcher.peak_held == 1
