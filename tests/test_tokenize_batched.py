"""`uti tokenize --encode-batch N` (the job's side), on local Ray (CPU).

The flag sets the audio and image codecs' items per forward pass; job.json's config and every shard
header (version 2) record the encode policy; the shards are byte-identical for any actor count and chunk
size. Each actor self-checks its codecs at start and a batch-dependent codec stops the job with one line.
job.json says how busy the actors' forward passes kept them and whether the reads kept up.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import uti_in_process
from tokenize_helpers import shard_bytes

pytestmark = pytest.mark.ray

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _tokenize(manifests: list[str], out: Path, *flags: str) -> tuple[dict, str]:
    """`uti tokenize` (the console script's main, on the session's Ray) -> (job.json, stdout)."""
    args = [a for m in manifests for a in ("--manifest", m)]
    done = uti_in_process("tokenize", *args, "--out", str(out), "--no-progress", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "job.json").read_text()), done.stdout + done.stderr


def _headers(out: Path) -> dict[str, dict]:
    from ray_jobs.policy import read_header

    return {str(p.relative_to(out)): read_header(str(p)) for p in sorted((out / "shards").rglob("*.tar"))}


@pytest.fixture(scope="module")
def batched(ray_session, tokenize_manifests, tmp_path_factory):
    """--encode-batch 4: one actor at the default chunk sizes, and two actors on tiny chunks."""
    base = tmp_path_factory.mktemp("batched")
    one = _tokenize(tokenize_manifests, base / "one", "--encode-batch", "4", "--num-actors", "1")
    two = _tokenize(tokenize_manifests, base / "two", "--encode-batch", "4", "--num-actors", "2",
                    "--batch-seconds", "0.5", "--max-images-per-batch", "1")
    return {"one": (base / "one", *one), "two": (base / "two", *two)}


def test_encode_batch_4_gives_the_same_bytes_for_any_actors_and_chunks_and_records_the_policy(batched):
    from uti.codecs.batching import PADDING_BUCKETS, PADDING_IMAGES

    one_out, one, _ = batched["one"]
    two_out, two, _ = batched["two"]
    assert two["counts"]["chunks_encoded"] > one["counts"]["chunks_encoded"] >= 2
    assert len(two["actors"]["busy_seconds_by_pid"]) == 2  # both actors encoded
    assert shard_bytes(one_out) == shard_bytes(two_out)
    for job in (one, two):
        assert job["config"]["audio"]["encode_batch"] == 4 and job["config"]["image"]["encode_batch"] == 4
        assert job["arguments"]["encode_batch"] == 4
        assert {m: p["encode_batch"] for m, p in job["encode_policy"].items()} == {"audio": 4, "image": 4}
    # Not given, the chunk sizes follow the encode batch: max(60, 30 x 4) s of audio, max(64, 4 x 4) images.
    assert (one["arguments"]["batch_seconds"], one["arguments"]["max_images_per_batch"]) == (120.0, 64)
    assert (two["arguments"]["batch_seconds"], two["arguments"]["max_images_per_batch"]) == (0.5, 1)
    headers = _headers(one_out)
    assert set(headers) == {"shards/development/shard-000000.tar", "shards/train/shard-000000.tar"}
    for name, header in headers.items():
        assert header["version"] == 2, name
        (modality, policy), = header["encode_policy"].items()  # a shard records the media its rows hold
        assert modality == ("audio" if "development" in name else "image")
        assert policy == one["encode_policy"][modality]
        assert (policy["encode_batch"], policy["device_type"], policy["dtype"], policy["tf32"]) == \
            (4, "cpu", "float32", False)
        assert policy["padding"] == (PADDING_BUCKETS if modality == "audio" else PADDING_IMAGES)


def test_busy_and_feed_figures_are_there_and_add_up(batched):
    _, job, out = batched["two"]
    actors, counts = job["actors"], job["counts"]
    encoded = counts["by_modality_this_run"]
    assert actors["busy_fraction"] > 0 and "read_wait_seconds" in actors  # the figures there before stay
    assert 0 < actors["forward_busy_fraction"] <= actors["busy_fraction"] + 1e-9
    per = actors["per_actor"]
    assert len(per) == 2 and {str(a["pid"]) for a in per} == set(actors["busy_seconds_by_pid"])
    assert sum(a["chunks"] for a in per) == counts["chunks_encoded"]
    for a in per:
        assert 0 < a["busy_fraction"] <= 1 and 0 <= a["idle_waiting_for_reads"] <= 1, a
        assert a["device"] == "cpu" and a["node"] and a["wall_seconds"] > 0
        assert isinstance(a["passes_estimated"], bool)  # true while an adapter keeps no pass log
        histogram = {int(k): v for k, v in a["items_per_pass"]["histogram"].items()}
        assert sum(histogram.values()) == a["passes"] > 0
        assert max(histogram) <= 4  # never more real items than the encode batch
        items = sum(k * v for k, v in histogram.items())
        assert a["items_per_pass"]["mean"] == pytest.approx(items / a["passes"])
        assert a["dummy_items"] == 4 * a["passes"] - items  # every pass has the fixed shape of 4
    # Every sample encoded went through exactly one forward pass (no codec errors in this set).
    assert sum(sum(int(k) * v for k, v in a["items_per_pass"]["histogram"].items()) for a in per) == \
        encoded["audio"] + encoded["image"]
    feed = actors["feed"]
    assert feed["unit"] in ("audio_seconds", "images")
    assert feed["read_rate"] > 0 and feed["encode_rate"] > 0 and feed["delivered_rate"] > 0
    assert 0 <= feed["actors_idle_fraction"] <= 1
    # delivered is what went through; the actors' forward passes can sustain more, never less
    assert feed["delivered_rate"] <= feed["encode_rate"]
    # The end-of-run line about waiting for reads comes exactly when the whole run's idle share is over 10%
    # and the run was long enough for that to say something (a few seconds: the first read's imports).
    from ray_jobs.feed import IDLE_MIN_SECONDS

    said = [line for line in out.splitlines() if line.startswith("uti tokenize: actors idle ")]
    long_enough = job["throughput"]["processing_seconds"] >= IDLE_MIN_SECONDS
    assert len(said) == (1 if feed["actors_idle_fraction"] > 0.10 and long_enough else 0), out


def test_a_resume_under_another_policy_warns_once_and_records_the_earlier_one(batched, tokenize_manifests, tmp_path):
    src, _, _ = batched["one"]
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "shards" / "train" / "shard-000000.json").unlink()  # that shard is to do again; development stays
    job, said = _tokenize(tokenize_manifests, out, "--encode-batch", "2", "--num-actors", "1")
    warnings = [line for line in said.splitlines() if "another policy" in line]
    assert len(warnings) == 1, said
    assert "the 1 shard already complete" in warnings[0] and "audio.encode_batch: 4 != 2" in warnings[0], warnings
    assert job["counts"]["shards"] == {"total": 2, "skipped_complete": 1, "written": 1}
    assert job["encode_policy_of_earlier_shards"]["audio"]["encode_batch"] == 4
    assert job["encode_policy"]["image"]["encode_batch"] == 2
    headers = _headers(out)
    assert headers["shards/train/shard-000000.tar"]["encode_policy"]["image"]["encode_batch"] == 2
    assert headers["shards/development/shard-000000.tar"]["encode_policy"]["audio"]["encode_batch"] == 4


def test_the_self_check_stops_a_job_whose_codec_codes_depend_on_the_batch(tokenize_manifests, tmp_path):
    """A real `uti tokenize` process (its own Ray: the test codec reaches the workers through PYTHONPATH)."""
    from batchdep_codec import BATCHDEP_KIND, write_dist_info

    write_dist_info(tmp_path / "plugin")
    config = tmp_path / "uti.yaml"
    config.write_text(f"text: {{kind: byte}}\naudio: {{kind: {BATCHDEP_KIND}}}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), str(tmp_path / "plugin")])}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "uti.cli", "tokenize", "--manifest", tokenize_manifests[0],
                           "--out", str(out), "--config", str(config), "--encode-batch", "4", "--num-actors", "1",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr  # one line, no traceback wall
    line = lines[0]
    assert line.startswith("uti tokenize: error: the first codec actor failed to start: audio codec kind "
                           f"'{BATCHDEP_KIND}'"), line
    assert "on cpu" in line and "encode_batch 4" in line and "--encode-batch 1" in line, line
    assert not list(out.rglob("*.tar")) and not (out / "job.json").exists()


# ---- the parts, without Ray ---------------------------------------------------------------------------------
def test_the_flag_is_checked_and_old_arguments_still_load():
    from ray_jobs import config as tcfg
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import with_encode_batch
    from uti.codecs import batching
    from uti.config import config_from_yaml
    from uti.errors import ConfigError
    from uti.strict import from_dict

    assert tcfg.MAX_ENCODE_BATCH == batching.MAX_ENCODE_BATCH  # kept apart only so the driver needs no torch
    for bad in (0, batching.MAX_ENCODE_BATCH + 1, True, 2.0):
        with pytest.raises(ConfigError, match="--encode-batch"):
            TokenizeConfig(manifests=("m",), out="o", encode_batch=bad)
    refused = uti_in_process("tokenize", "--manifest", "m.jsonl", "--out", "o", "--encode-batch", "0")
    assert refused.returncode == 2 and "--encode-batch: must be a whole number from 1 to 1024" in refused.stderr
    # The "arguments" of a job.json written before the flag existed.
    old = {"manifests": ["m.jsonl"], "out": "o", "config": None, "address": None, "num_actors": 2,
           "gpus_per_actor": None, "cpus_per_actor": 1.0, "shard_samples": None, "shard_seconds": None,
           "batch_seconds": 60.0, "max_images_per_batch": 64, "max_shard_failures": 3, "read_cpus": 0.5,
           "read_in": "auto", "dashboard": False, "progress": True, "progress_every": 15.0}
    cfg = from_dict(TokenizeConfig, old, where="job.json arguments")
    assert (cfg.chunk_seconds, cfg.chunk_images, cfg.encode_batch) == (60.0, 64, None)
    # The flag wins over uti.yaml's encode_batch; without it the yaml's value stays.
    yaml_cfg = config_from_yaml("text: {kind: byte}\naudio: {kind: encodec, encode_batch: 2}\nimage: {kind: vqgan}\n")
    flagged = with_encode_batch(yaml_cfg, 4)
    assert (flagged.audio.encode_batch, flagged.image.encode_batch) == (4, 4)
    assert with_encode_batch(yaml_cfg, None) is yaml_cfg and yaml_cfg.image.encode_batch is None
    sized = TokenizeConfig(manifests=("m",), out="o").sized(audio_batch=16, image_batch=32)
    assert (sized.batch_seconds, sized.max_images_per_batch) == (480.0, 128)
    kept = TokenizeConfig(manifests=("m",), out="o", batch_seconds=5.0).sized(audio_batch=16, image_batch=1)
    assert (kept.batch_seconds, kept.max_images_per_batch) == (5.0, 64)


def test_an_actor_with_other_numerics_is_refused_naming_node_device_and_the_difference():
    from ray_jobs.outputs import JobError
    from ray_jobs.policy import check_actor_policy, policy_differences, shard_policy
    from uti.codecs.batching import EncodePolicy

    cpu = {"audio": EncodePolicy(device_type="cpu", torch="2.11.0").to_dict()}
    check_actor_policy(1, {"node": "n1", "device": "cpu", "encode_policy": cpu}, cpu)  # the same: accepted
    gpu = {"audio": EncodePolicy(device_type="cuda", encode_batch=16, torch="2.11.0").to_dict()}
    with pytest.raises(JobError) as refused:
        check_actor_policy(3, {"node": "abc123", "device": "cuda", "encode_policy": gpu}, cpu)
    message = str(refused.value)
    assert "codec actor 3 (node abc123, device cuda)" in message
    assert "audio.device_type: 'cpu' != 'cuda'" in message and "audio.encode_batch: 1 != 16" in message
    newer = {"audio": EncodePolicy(device_type="cpu", torch="2.12.0").to_dict()}
    assert policy_differences(cpu, newer) == ["audio.torch: '2.11.0' != '2.12.0'"]  # one header, one torch
    assert shard_policy({**cpu, **{"image": {"x": 1}}}, {"audio", "text"}) == cpu
    assert shard_policy(None, {"audio"}) is None


def test_the_idle_share_names_the_flags_that_help_and_covers_the_last_interval():
    from ray_jobs.chunks import ChunkStats, chunk_pass_figures
    from ray_jobs.feed import IdleWindow, idle_message
    from uti.codecs.batching import Pass, PassLog

    assert idle_message(0.10, reads_in_actors=True, read_cpus=0.5) is None
    inline = idle_message(0.35, reads_in_actors=True, read_cpus=0.5)
    assert inline.startswith("actors idle 35% waiting for reads") and "--read-in tasks" in inline
    tasks = idle_message(0.35, reads_in_actors=False, read_cpus=0.5)
    assert "add CPUs" in tasks and "--read-cpus (now 0.5)" in tasks
    now = [100.0]
    window = IdleWindow(seconds=15.0, reads_in_actors=False, read_cpus=0.5, clock=lambda: now[0])

    def chunk(wait: float, busy: float) -> ChunkStats:
        return ChunkStats(split="s", shard="x", index=0, num_samples=1, num_errors=0, audio_seconds=1.0, images=0,
                          busy=busy, wait=wait, pid=1, started_at=0.0, finished_at=0.0)

    assert window.message() is None  # nothing finished yet
    window.add(chunk(1.0, 2.0))
    assert "idle 33%" in window.message()
    now[0] += 16.0  # that chunk is older than the interval
    window.add(chunk(0.0, 2.0))
    assert window.share() == 0.0 and window.message() is None
    # A codec that logs its passes is taken at its word; one that logs none is counted as its contract says.
    log = PassLog()
    log.add(Pass(length=8, members=(0, 1, 2), batch=4), 0.25)
    figures = chunk_pass_figures({"audio": log.take(), "image": PassLog()}, items={"audio": 3, "image": 5},
                                 batches={"audio": 4, "image": 2}, encode_seconds=1.0)
    assert (figures["audio"].passes, figures["audio"].dummies, figures["audio"].sizes, figures["audio"].logged) == \
        (1, 1, {3: 1}, True)
    assert (figures["image"].passes, figures["image"].dummies, figures["image"].sizes, figures["image"].logged) == \
        (3, 1, {2: 2, 1: 1}, False)
    assert figures["image"].seconds == pytest.approx(0.75)  # the encode time the logged passes leave


def test_chunks_of_a_batched_job_are_cut_in_bucket_order_and_written_in_plan_order():
    """With passes of several items, a chunk holds runs of one length bucket (its passes fill up) and the
    shard is still assembled in plan order; encode batch 1 keeps plan-order chunks."""
    from types import SimpleNamespace

    from ray_jobs.chunks import EncodedChunk, assemble, bucketed_chunks, shard_chunks
    from sharding.format import Sample  # noqa: F401 - the samples below only need an id
    from uti.buckets import duration_bucket

    durations = [1.0, 30.0, 2.0, 13.0, 1.0, 30.0, 2.0, 13.0] * 8  # plan order mixes ~4 buckets
    rows = {f"r{i:03d}": SimpleNamespace(id=f"r{i:03d}", modality="audio", duration=d) for i, d in enumerate(durations)}
    shard = SimpleNamespace(name="shard-000000", ids=sorted(rows))
    assert bucketed_chunks({"audio": {"encode_batch": 4}}) and not bucketed_chunks({"audio": {"encode_batch": 1}})

    plain = shard_chunks("train", shard, rows.__getitem__, batch_seconds=120.0, max_images=64)
    bucketed = shard_chunks("train", shard, rows.__getitem__, batch_seconds=120.0, max_images=64, bucketed=True)
    assert all(c.positions is None for c in plain)

    def dummies(chunks, batch=4):  # the all-zero items that fill each bucket's last pass of each chunk
        total = 0
        for c in chunks:
            counts = collections.Counter(duration_bucket(rows[x].duration) for x in c.row_ids(shard.ids))
            total += sum(-(-n // batch) * batch - n for n in counts.values())
        return total

    assert dummies(bucketed) * 3 <= dummies(plain), (dummies(bucketed), dummies(plain))
    covered = [x for c in bucketed for x in c.row_ids(shard.ids)]
    assert sorted(covered) == shard.ids and len(covered) == len(set(covered))  # every row once
    # The writer puts the samples back in plan order, whatever order the chunks hold them in.
    encoded = [EncodedChunk(ids=c.row_ids(shard.ids), samples=[SimpleNamespace(id=x) for x in c.row_ids(shard.ids)],
                            errors=[]) for c in bucketed]
    samples, errors = assemble(shard.ids, encoded, where="train/shard-000000")
    assert [s.id for s in samples] == shard.ids and errors == []
    with pytest.raises(RuntimeError, match="exactly-once"):
        assemble(shard.ids, encoded[:-1], where="train/shard-000000")


def test_verify_re_encodes_with_the_recorded_policy_and_fails_when_it_is_edited(batched, tmp_path):
    """`uti verify` on the --encode-batch 4 output: every sample re-encoded at encode batch 4, exactly (same
    device type). Then the image shard's header is made to claim the images were resized on the device:
    verify prepares them as claimed, and the tokens (made from PIL's resize) no longer match."""
    from verify import VerifyConfig, run_verify
    from verify_helpers import rewrite_shard

    src, job, _ = batched["one"]
    out = tmp_path / "out"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("verify", "lock.json"))

    def verify():
        result = run_verify(VerifyConfig(out=str(out), decode_fraction=0.0, retokenize_fraction=1.0, plots=False,
                                         loader_batches=1, report_dir=str(tmp_path / f"report{len(list(tmp_path.iterdir()))}")))
        return result, json.loads(result.json_path.read_text())

    result, report = verify()
    retok = result.check("retokenize")
    assert result.ok and retok["counts"]["mode"] == "exact" and retok["counts"]["exact"] is True, retok
    assert {p["modality"]: p["encode_batch"] for p in retok["counts"]["policies"]} == {"audio": 4, "image": 4}
    assert retok["counts"]["retokenize.items"] == job["counts"]["samples"]

    def claim_device_resize(header, samples):
        policy = header["encode_policy"]
        header = {**header, "encode_policy": {m: {**p, "prepare_on": "device"} for m, p in policy.items()}}
        return header, samples

    rewrite_shard(out, "train", "shard-000000", claim_device_resize)  # the image shard
    result, _ = verify()
    retok = result.check("retokenize")
    assert not result.ok and retok["failures"] >= 1, retok
    assert all(e["shard"] == "train/shard-000000" and "re-encoded tokens differ" in e["detail"]
               for e in retok["examples"]), retok["examples"]
