"""job.json's summary: JobSummary.to_json() gives exactly the keys and values job.json has held for a run,
checked against a literal of a small run's summary (two splits, audio and an image, a retry, an error)."""

from __future__ import annotations

import json
import os
import platform

import pytest

from ray_jobs.chunks import ChunkStats, PassFigures, ShardResult
from ray_jobs.config import TokenizeConfig
from ray_jobs.scheduler import RunResult
from sharding.format import ShardRef
from sharding.manifest import ManifestRow, manifest_sha256, manifests_sha256, write_manifest
from sharding.plan import make_plan
from uti import __version__
from uti.config import load_config
from uti.strict import to_dict

TOKEN_SPACE_ID = "ab" * 32


def run_inputs(tmp_path):
    """A two-shard plan of three rows, its committed shards, and the run that wrote them."""
    rows = [ManifestRow(id="d:a", dataset="d", modality="audio", path="/x/a.wav", split="train", duration=2.0),
            ManifestRow(id="d:b", dataset="d", modality="image", path="/x/b.png", split="train"),
            ManifestRow(id="d:c", dataset="d", modality="text", path=None, captions=("hi",), split="valid")]
    manifest = str(tmp_path / "m.jsonl")
    write_manifest(manifest, rows)
    plan = make_plan(rows, manifest_sha256=manifests_sha256([manifest]), target_samples=2)
    cfg = TokenizeConfig(manifests=(manifest,), out=str(tmp_path / "out"), progress=False)
    refs = {("train", "s0"): ShardRef(split="train", name="s0", tar_path="t", index_path="i",
                                      index={"num_samples": 1, "errors": [{"id": "d:b"}]}),
            ("valid", "s1"): ShardRef(split="valid", name="s1", tar_path="t", index_path="i",
                                      index={"num_samples": 1})}
    shards = [ShardResult(split="train", shard="s0", num_samples=1, num_errors=1, audio_seconds=2.0, images=0,
                          media_tokens=150, text_tokens=10, modalities={"audio": 1}, error_reasons={"decode": 1}),
              ShardResult(split="valid", shard="s1", num_samples=1, num_errors=0, audio_seconds=0.0, images=1,
                          media_tokens=64, text_tokens=2, modalities={"image": 1})]
    passes = {"audio": PassFigures(passes=1, items=1, dummies=0, seconds=0.5, sizes={1: 1})}
    chunks = [ChunkStats(split="train", shard="s0", index=0, num_samples=1, num_errors=1, audio_seconds=2.0,
                         images=0, busy=1.0, wait=0.25, pid=11, started_at=100.0, finished_at=101.0, tokens=160,
                         passes=passes),
              ChunkStats(split="valid", shard="s1", index=0, num_samples=1, num_errors=0, audio_seconds=0.0,
                         images=1, busy=0.5, wait=0.5, pid=12, started_at=100.5, finished_at=102.0, tokens=66)]
    info = [{"pid": 11, "device": "cpu", "codecs": ["audio"], "torch": "9.9", "node": "n", "ready_at": 99.0},
            {"pid": 12, "device": "cpu", "codecs": ["image", "audio"], "torch": "9.9", "node": "n", "ready_at": 99.5}]
    run = RunResult(shards=shards, chunks=chunks, failures_by_shard={"train/s0": 1}, chunk_retries=1,
                    writer_retries=0, actor_info=info, actors_started=3, processing_seconds=4.0,
                    startup_seconds=1.5, reads_in_actors=False, actors_by_pid={11: info[0], 12: info[1]},
                    last_chunk_at=102.0, chunk_read_seconds=[0.2, 0.4],
                    encode_policy={"audio": {"encode_batch": 1}})
    return cfg, load_config(None), plan, refs, [{"id": "d:b", "reason": "decode"}], run


# job.json of the run above, less what depends on the machine (paths, versions, the config's defaults) and the
# actors' per_actor and feed (ray_jobs.feed's own figures, checked in tests/test_tokenize_batched.py).
EXPECTED = \
    {'format': 'uti.job',
     'version': 1,
     'complete': True,
     'token_space_id': 'abababababababababababababababababababababababababababababababab',
     'encode_policy': {'audio': {'encode_batch': 1}},
     'counts': {'planned': 3,
                'samples': 2,
                'errors': 1,
                'by_split': {'train': {'samples': 1, 'errors': 1}, 'valid': {'samples': 1, 'errors': 0}},
                'samples_this_run': 2,
                'errors_this_run': 1,
                'by_modality_this_run': {'audio': 1, 'image': 1},
                'error_reasons_this_run': {'decode': 1},
                'shards': {'total': 2, 'skipped_complete': 1, 'written': 2},
                'chunks_encoded': 2},
     'throughput': {'processing_seconds': 4.0,
                    'audio_seconds': 2.0,
                    'images': 1,
                    'audio_span_seconds': 1.0,
                    'image_span_seconds': 1.5,
                    'audio_seconds_per_second': 2.0,
                    'images_per_second': 0.6666666666666666,
                    'tokens_per_second': 56.5,
                    'wall_seconds': 9.0,
                    'startup_seconds': 1.5,
                    'total_seconds_with_startup': 7.0},
     'actors': {'count': 3,
                'ready': 2,
                'device': 'cpu',
                'codecs_loaded': ['audio', 'image'],
                'busy_fraction': 0.1875,
                'busy_seconds_by_pid': {'11': 1.0, '12': 0.5},
                'reads_in': 'tasks',
                'read_wait_seconds': 0.75,
                'forward_busy_fraction': 0.0625},
     'retries': 1,
     'retries_by_kind': {'chunks': 1, 'writers': 0},
     'failures_by_shard': {'train/s0': 1},
     'encode_policy_of_earlier_shards': {'audio': {'encode_batch': 4}},
     'driver_peak_rss_mb': 123.4,
     'orphans_removed': [{'url': 'u', 'kind': 'tar'}]}
# job.json's key order, as it was built (job.json itself is written with sorted keys).
KEYS = ["format", "version", "producer", "complete", "token_space_id", "manifests", "manifest_sha256", "plan_sha256",
        "config", "arguments", "encode_policy", "counts", "throughput", "actors", "retries", "retries_by_kind",
        "failures_by_shard", "versions", "encode_policy_of_earlier_shards", "driver_peak_rss_mb", "orphans_removed"]


def summary_of(tmp_path, *, earlier=None, run=None):
    from ray_jobs.summary import JobSummary, Timings
    from sharding.orphans import OrphanObject

    cfg, ucfg, plan, refs, errors, made = run_inputs(tmp_path)
    times = Timings(command_started=1000.0, started=1002.0, finished=1009.0, startup_seconds=1.5)
    orphans = [OrphanObject(split="train", name="s0", kind="tar", url="u")]
    summary = JobSummary.of_run(cfg, ucfg, token_space_id=TOKEN_SPACE_ID, plan=plan, refs=refs, errors=errors,
                                run=made if run is None else run, skipped=1, times=times, driver_peak_rss_mb=123.4,
                                orphans=orphans, earlier=earlier)
    return summary, cfg, ucfg, plan, made


def test_to_json_gives_the_keys_and_values_job_json_holds(tmp_path):
    from ray_jobs.feed import actors_summary
    from ray_jobs.policy import EarlierShards

    earlier = EarlierShards(shards=1, first="train/s0", policy={"audio": {"encode_batch": 4}},
                            differences=["audio encode_batch 4 != 1"])
    summary, cfg, ucfg, plan, run = summary_of(tmp_path, earlier=earlier)
    job = summary.to_json()
    assert list(job) == KEYS
    manifest = cfg.manifests[0]
    machine = {"producer": f"uti {__version__}",
               "manifests": [{"path": os.path.abspath(manifest), "sha256": manifest_sha256(manifest)}],
               "manifest_sha256": plan.manifest_sha256, "plan_sha256": plan.sha256,
               "config": to_dict(ucfg), "arguments": to_dict(cfg),
               "versions": {"uti": __version__, "python": platform.python_version(), "torch": "9.9",
                            "ray": __import__("ray").__version__}}
    feed = actors_summary(run, processing=run.processing_seconds)
    assert {k: v for k, v in job.items() if k not in machine} == {
        **EXPECTED, "actors": {**EXPECTED["actors"], "per_actor": feed["per_actor"], "feed": feed["feed"]}}
    assert {k: job[k] for k in machine} == machine
    assert job["actors"]["feed"]["actors_idle_fraction"] == pytest.approx(0.13636, abs=1e-4)  # the progress note's
    json.dumps(job, allow_nan=False)  # job.json is plain JSON


def test_the_earlier_shards_policy_is_named_only_when_it_differs(tmp_path):
    from ray_jobs.policy import EarlierShards

    same = EarlierShards(shards=1, first="train/s0", policy={"audio": {"encode_batch": 1}}, differences=[])
    assert "encode_policy_of_earlier_shards" not in summary_of(tmp_path, earlier=same)[0].to_json()
    assert "encode_policy_of_earlier_shards" not in summary_of(tmp_path, earlier=None)[0].to_json()
    # A version 1 header records no policy: the key says so with null rather than leaving the difference out.
    unknown = EarlierShards(shards=1, first="train/s0", policy=None, differences=["audio: not recorded"])
    assert summary_of(tmp_path, earlier=unknown)[0].to_json()["encode_policy_of_earlier_shards"] is None


def test_a_run_with_nothing_to_do_has_zero_rates_and_no_actors(tmp_path):
    from ray_jobs.summary import empty_run

    job = summary_of(tmp_path, run=empty_run())[0].to_json()
    assert job["throughput"]["tokens_per_second"] == job["throughput"]["images_per_second"] == 0.0
    assert job["actors"]["device"] is None and job["actors"]["busy_fraction"] == 0.0
    assert job["counts"]["shards"] == {"total": 2, "skipped_complete": 1, "written": 0}
    assert job["counts"]["samples"] == 2  # the dataset's: the shards complete before this run
    assert job["encode_policy"] is None and job["retries"] == 0
