"""job.json: the summary of a finished tokenize run (docs/FORMAT.md), written last into OUT.

`JobSummary.of_run` gathers the figures from the plan, the committed shards and the scheduler's RunResult;
`to_json()` gives the object job.json holds. Its keys are read by `uti verify`, training and the
benchmarks, so each one keeps its name and meaning (job.json is written with sorted keys: the field
order here is for the reader).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import platform
import sys
from typing import Any, Iterable

from ray_jobs.feed import actors_summary
from ray_jobs.policy import EarlierShards
from ray_jobs.scheduler import RunResult
from sharding.manifest import manifest_sha256
from sharding.plan import Plan
from uti import __version__
from uti.strict import to_dict

FORMAT = "uti.job"
VERSION = 1


@dataclasses.dataclass(kw_only=True, frozen=True)
class Timings:
    """The run's clock readings on the driver, each named for what it measures."""

    command_started: float  # `uti tokenize` started: manifests, plan, Ray, codecs and the work follow
    started: float  # Ray started (after planning)
    finished: float  # every shard committed
    startup_seconds: float | None  # command start -> first chunk sent to a loaded codec actor (None: no work)


@dataclasses.dataclass(kw_only=True, frozen=True)
class Counts:
    """Samples and shards: the dataset's (every complete shard) and this run's share (a resumed run
    tokenized only the shards it wrote)."""

    planned: int
    samples: int
    errors: int
    by_split: dict[str, dict[str, int]]
    samples_this_run: int
    errors_this_run: int
    by_modality_this_run: dict[str, int]
    error_reasons_this_run: dict[str, int]
    shards: dict[str, int]  # total, skipped_complete, written
    chunks_encoded: int

    @classmethod
    def of_run(cls, plan: Plan, refs, errors: list[dict], run: RunResult, *, skipped: int) -> "Counts":
        by_split: dict[str, dict[str, int]] = {}
        for (split, _), ref in sorted(refs.items()):
            entry = by_split.setdefault(split, {"samples": 0, "errors": 0})
            entry["samples"] += ref.index["num_samples"]
            entry["errors"] += len(ref.index.get("errors", []))
        by_modality: collections.Counter = collections.Counter()
        reasons: collections.Counter = collections.Counter()
        for s in run.shards:
            by_modality.update(s.modalities)
            reasons.update(s.error_reasons)
        return cls(planned=plan.num_samples, samples=sum(v["samples"] for v in by_split.values()),
                   errors=len(errors), by_split=by_split,
                   samples_this_run=sum(s.num_samples for s in run.shards),
                   errors_this_run=sum(s.num_errors for s in run.shards),
                   by_modality_this_run=dict(by_modality), error_reasons_this_run=dict(reasons),
                   shards={"total": plan.num_shards, "skipped_complete": skipped, "written": len(run.shards)},
                   chunks_encoded=len(run.chunks))


@dataclasses.dataclass(kw_only=True, frozen=True)
class Throughput:
    """How fast the run went. Each modality's rate is over the time its chunks were being encoded, not the
    whole job's: in a job of long audio and a few images, images/s over the whole run said nothing about the
    image codec."""

    processing_seconds: float  # first codec actor loaded -> last shard committed
    audio_seconds: float
    images: int
    audio_span_seconds: float
    image_span_seconds: float
    audio_seconds_per_second: float
    images_per_second: float
    tokens_per_second: float
    wall_seconds: float  # the whole command: manifests, plan, Ray, codecs, work
    startup_seconds: float | None  # command start -> first chunk sent to a loaded codec actor (None: no work)
    total_seconds_with_startup: float  # Ray start (after planning) -> end

    @classmethod
    def of_run(cls, run: RunResult, times: Timings) -> "Throughput":
        audio_s = sum(s.audio_seconds for s in run.shards)
        images = sum(s.images for s in run.shards)
        tokens = sum(s.media_tokens + s.text_tokens for s in run.shards)
        processing = run.processing_seconds
        audio_span = _span([c for c in run.chunks if c.audio_seconds > 0])
        image_span = _span([c for c in run.chunks if c.images > 0])
        return cls(processing_seconds=processing, audio_seconds=audio_s, images=images,
                   audio_span_seconds=audio_span, image_span_seconds=image_span,
                   audio_seconds_per_second=audio_s / audio_span if audio_span else 0.0,
                   images_per_second=images / image_span if image_span else 0.0,
                   tokens_per_second=tokens / processing if processing else 0.0,
                   wall_seconds=times.finished - times.command_started, startup_seconds=times.startup_seconds,
                   total_seconds_with_startup=times.finished - times.started)


def actors_of_run(run: RunResult) -> dict[str, Any]:
    """job.json's "actors": how many, on what, and how busy (per_actor and feed: ray_jobs.feed)."""
    processing = run.processing_seconds
    busy_by_pid: collections.Counter = collections.Counter()
    for c in run.chunks:
        busy_by_pid[c.pid] += c.busy
    n_actors = max(1, len(run.actor_info))
    return {
        # Started; `ready`: those whose codecs loaded before the work ran out (a late one joins no chunk).
        "count": run.actors_started, "ready": len(run.actor_info),
        "device": run.actor_info[0]["device"] if run.actor_info else None,
        # the codecs the actors loaded: those the rows need (the token space names every configured one)
        "codecs_loaded": sorted({m for info in run.actor_info for m in info.get("codecs", ())}),
        "busy_fraction": sum(busy_by_pid.values()) / (n_actors * processing) if processing and run.chunks else 0.0,
        "busy_seconds_by_pid": {str(k): v for k, v in busy_by_pid.items()},
        # who read the media (--read-in), and the actors' time not encoding: waiting for read tasks, or reading
        "reads_in": None if run.reads_in_actors is None else "actors" if run.reads_in_actors else "tasks",
        "read_wait_seconds": sum(c.wait for c in run.chunks),
        # forward_busy_fraction, per_actor, feed (each defined in ray_jobs.feed and docs/FORMAT.md)
        **actors_summary(run, processing=processing),
    }


@dataclasses.dataclass(kw_only=True, frozen=True)
class JobSummary:
    """What job.json records of a finished run: its inputs, the token space, the counts, the speed, the
    actors, the work redone and the versions that made it."""

    token_space_id: str
    manifests: list[dict[str, str]]  # path (absolute) and sha256 of each manifest
    manifest_sha256: str
    plan_sha256: str
    config: dict  # the codec config (uti.yaml), as the actors used it
    arguments: dict  # the TokenizeConfig, its chunk sizes set (ray_jobs.job.sized_for)
    # {modality: uti.codecs.batching.EncodePolicy dict}: the numerics of this run's tokens, as every shard
    # header it wrote records them (every actor's: ray_jobs.policy); None: nothing was encoded
    encode_policy: dict[str, dict] | None
    counts: Counts
    throughput: Throughput
    actors: dict[str, Any]
    chunk_retries: int  # chunks sent again (an actor killed or restarting, a chunk's error)
    writer_retries: int  # shard writers run again
    failures_by_shard: dict[str, int]
    versions: dict[str, str]
    # The complete shards a resumed run kept, when they record another policy (their tokens mean the same).
    earlier: EarlierShards | None = None
    driver_peak_rss_mb: float
    orphans_removed: list[dict[str, str]]  # leftovers of an interrupted run: url, kind

    @classmethod
    def of_run(cls, cfg, ucfg, *, token_space_id: str, plan: Plan, refs, errors: list[dict], run: RunResult,
               skipped: int, times: Timings, driver_peak_rss_mb: float, orphans: Iterable = (),
               earlier: EarlierShards | None = None) -> "JobSummary":
        return cls(
            token_space_id=token_space_id,
            manifests=[{"path": os.path.abspath(p), "sha256": manifest_sha256(p)} for p in cfg.manifests],
            manifest_sha256=plan.manifest_sha256, plan_sha256=plan.sha256,
            config=to_dict(ucfg), arguments=to_dict(cfg), encode_policy=run.encode_policy,
            counts=Counts.of_run(plan, refs, errors, run, skipped=skipped),
            throughput=Throughput.of_run(run, times), actors=actors_of_run(run),
            chunk_retries=run.chunk_retries, writer_retries=run.writer_retries,
            failures_by_shard=dict(run.failures_by_shard), versions=versions(run), earlier=earlier,
            driver_peak_rss_mb=driver_peak_rss_mb,
            orphans_removed=[{"url": o.url, "kind": o.kind} for o in orphans])

    def to_json(self) -> dict[str, Any]:
        """The object job.json holds (sharding.outdir.write_job)."""
        job: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "producer": f"uti {__version__}", "complete": True,
            "token_space_id": self.token_space_id, "manifests": self.manifests,
            "manifest_sha256": self.manifest_sha256, "plan_sha256": self.plan_sha256,
            "config": self.config, "arguments": self.arguments, "encode_policy": self.encode_policy,
            "counts": dataclasses.asdict(self.counts), "throughput": dataclasses.asdict(self.throughput),
            "actors": self.actors,
            "retries": self.chunk_retries + self.writer_retries,
            "retries_by_kind": {"chunks": self.chunk_retries, "writers": self.writer_retries},
            "failures_by_shard": self.failures_by_shard, "versions": self.versions,
        }
        if self.earlier is not None and self.earlier.differences:
            job["encode_policy_of_earlier_shards"] = self.earlier.policy  # the first kept shard's
        job["driver_peak_rss_mb"] = self.driver_peak_rss_mb
        job["orphans_removed"] = self.orphans_removed
        return job


def empty_run() -> RunResult:
    """The run of a job with nothing to do."""
    return RunResult(shards=[], chunks=[], failures_by_shard={}, chunk_retries=0, writer_retries=0, actor_info=[],
                     actors_started=0, processing_seconds=0.0, startup_seconds=None, reads_in_actors=None)


def versions(run: RunResult) -> dict[str, str]:
    """The versions that made the run's tokens: uti, Python, the codec actors' torch, Ray."""
    return {"uti": __version__, "python": platform.python_version(), "torch": _torch_version(run),
            "ray": __import__("ray").__version__}


def _torch_version(run: RunResult) -> str:
    """The codec actors' torch (what encoded); the driver imports torch only if it loaded a codec itself."""
    from importlib import metadata

    if run.actor_info and run.actor_info[0].get("torch"):
        return run.actor_info[0]["torch"]
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    return metadata.version("torch")


def _span(chunks) -> float:
    """Seconds from the first of these chunks starting to the last one finishing (on any actor)."""
    if not chunks:
        return 0.0
    return max(c.finished_at for c in chunks) - min(c.started_at for c in chunks)
