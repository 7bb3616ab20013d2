"""`uti tokenize`: manifests -> a tokenized dataset, on a laptop or a GPU cluster, exactly once.

Shards are the unit of storage and commit, chunks the unit of work (ray_jobs.scheduler). The driver plans
the shards, skips the ones already complete, and cuts the rest into chunks (about --batch-seconds of
audio or --max-images-per-batch images of one shard, in plan order) that any codec actor encodes; CPU
read tasks decode and resample a chunk's media ahead of its actor. A shard is committed by a light writer
task once all its chunks are encoded, so its bytes never depend on the number of actors or the order of
completion. A failed chunk is redone alone on a restarted or other actor; after `max_shard_failures`
failures within the same shard the job stops and names it. Ctrl-C or SIGTERM (raised as
KeyboardInterrupt, see uti.ray_local) cancels the read and writer tasks and kills the actors; a shard cut
short leaves only temp files, which the rerun removes. A run in which no sample could be tokenized is an
error, raised after errors.jsonl and job.json are written so the reasons can be read.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from typing import Any

from ray_jobs.config import TokenizeConfig
from ray_jobs.chunks import shard_chunks
from ray_jobs.feed import IDLE_MIN_SECONDS, idle_message
from ray_jobs.policy import EarlierShards, earlier_shards
from ray_jobs.read import prepare_args
from ray_jobs.resources import local_num_cpus, prepare_on
from ray_jobs.actors import CodecActors, CodecFacts, actor_name  # noqa: F401 - actor_name: imported from here
from ray_jobs.diagnostics import peak_rss_mb, short_error
from ray_jobs.scheduler import ChunkScheduler, RunResult
from ray_jobs.summary import JobSummary, Timings, empty_run
from ray_jobs.outputs import JobError, remove_stale_temp_files

from sharding.manifest import ManifestRow, manifests_sha256, read_manifests
from sharding.outdir import (ERRORS_NAME, claim_plan, claim_space, completed_shards, has_job, hold_lock, merge_errors,
                             plan_matches, write_job)
from sharding.plan import Plan, make_plan
from uti.config import UTIConfig, load_config
from uti.modalities import MEDIA_MODALITIES
from uti.progress import Progress
from uti.token_space import missing_modality_message

log = logging.getLogger(__name__)


def plan_job(cfg: TokenizeConfig) -> tuple[list[ManifestRow], Plan]:
    rows = read_manifests(list(cfg.manifests))
    if not rows:
        raise JobError(f"the manifests {', '.join(cfg.manifests)} hold no rows: nothing to tokenize; make one with "
                       "`uti manifest --dataset NAME --root DIR --out FILE`")
    target_samples = cfg.shard_samples if cfg.shard_samples or cfg.shard_seconds else 1000
    plan = make_plan(rows, manifest_sha256=manifests_sha256(list(cfg.manifests)),
                     target_samples=target_samples, target_seconds=cfg.shard_seconds)
    return rows, plan


# A manifest this big takes seconds to read (~200 bytes a row: 600k rows are 118 MB, read in ~5 s). Its
# actors are started first and load their codecs while it is read; a smaller one is read first (while Ray
# starts), so its actors can be capped by its chunks and load only the codecs its rows need.
BIG_MANIFEST_BYTES = 16 << 20


def _plan_while_ray_starts(cfg: TokenizeConfig, ucfg: UTIConfig,
                           ray_state: "_RayState") -> tuple[list[ManifestRow], Plan, "CodecActors | None"]:
    """Read the manifests and plan, overlapped with starting Ray (and, for a big manifest, with loading the
    codec actors); returns the rows, the plan and the actors started before the plan, if any.

    Starting Ray (~4 s), parsing a 600k-row manifest (~5 s) and loading the codecs (~5 s) are spent in
    different processes, so overlapped they cost much less than in a row (the goal: the first chunk within
    15 s at 600k rows). On two cores a parse beside Ray's start slows that start down as much as it gains,
    so a big manifest is read after Ray is up, while the actors load. Those load every configured media
    codec (which ones the rows need is not known yet) and are not capped by the chunks (a manifest this
    big has more chunks than actors). Without a job.json in OUT there is no finished run to find, so Ray
    will be needed; with one, a rerun may have nothing to do, and it is checked without starting Ray.
    """
    if has_job(cfg.out, flag="--out"):
        return (*plan_job(cfg), None)
    if _manifest_bytes(cfg) >= BIG_MANIFEST_BYTES:
        return _plan_while_actors_load(cfg, ucfg, ray_state)
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="uti-plan")
    planned = pool.submit(plan_job, cfg)
    try:
        try:
            ray_state.start()
        except Exception as ray_error:
            planned.result()  # a bad manifest is the clearer error: it needs no cluster to fix
            raise ray_error
        rows, plan = planned.result()
        return rows, plan, None
    except BaseException:  # Ctrl-C or an error: don't wait for the manifest, stop the Ray started for it
        ray_state.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=False)


def _plan_while_actors_load(cfg: TokenizeConfig, ucfg: UTIConfig,
                            ray_state: "_RayState") -> tuple[list[ManifestRow], Plan, "CodecActors"]:
    try:
        ray_state.start()
    except Exception as ray_error:
        plan_job(cfg)  # a bad manifest is the clearer error: it needs no cluster to fix
        raise ray_error
    early = None
    try:
        log.info("a big manifest: the codec actors start loading while it is read")
        # -1: the plan (and so the shard-based restart budget) is not known; the scheduler's own per-chunk
        # failure count (--max-shard-failures) still ends a job whose work keeps failing.
        # Only actor 0 loads while the manifest is read: on a small machine the others would slow both down,
        # and the first chunk waits for actor 0 alone. The others start once the plan is made.
        early = CodecActors.launch(cfg, ucfg, chunks=None, modalities=_head_modalities(cfg), max_restarts=-1,
                                   only_first=True)
        planned = plan_job(cfg)
        early.launch_rest()
        return (*planned, early)
    except BaseException:
        if early is not None:
            early.kill()
        ray_state.stop()
        raise


HEAD_BYTES = 1 << 18  # how much of each big manifest is looked at to guess its modalities


def _head_modalities(cfg: TokenizeConfig) -> tuple[str, ...]:
    """The media modalities of the first rows of each manifest: what a big manifest's early actors load.
    Only a guess (a manifest may change modality further down): the plan checks it (`_run_tokenize`)."""
    import json

    from sharding.storage import filesystem

    found: set[str] = set()
    for manifest in cfg.manifests:
        try:
            fs, path = filesystem(manifest)
            with fs.open(path, "rb") as fh:
                lines = fh.read(HEAD_BYTES).split(b"\n")[:-1]  # the last one may be cut
            found.update(json.loads(line).get("modality") for line in lines if line.strip())
        except Exception:  # noqa: BLE001 - unreadable: guess every modality; reading it reports the error
            return MEDIA_MODALITIES
    return tuple(m for m in MEDIA_MODALITIES if m in found) or MEDIA_MODALITIES


def _manifest_bytes(cfg: TokenizeConfig) -> int:
    """The manifests' total size (0 where it cannot be known: they are then read first, as small ones)."""
    from sharding.storage import filesystem

    total = 0
    for manifest in cfg.manifests:
        try:
            fs, path = filesystem(manifest)
            total += int(fs.size(path) or 0)
        except Exception:  # noqa: BLE001 - a missing or unreachable manifest is reported when it is read
            pass
    return total


def absolute_paths(cfg: TokenizeConfig, ucfg: UTIConfig) -> tuple[TokenizeConfig, UTIConfig]:
    """Relative local paths (--out, codec folders and weight files) resolved on the driver.

    Actors and read tasks may run on other nodes or in another working directory; an absolute path
    names the same file everywhere (on a cluster: the shared filesystem or the same image).
    """
    def absolute(path: str) -> str:
        return path if "://" in path else os.path.abspath(os.path.expanduser(path))

    changes: dict[str, Any] = {}
    text = getattr(ucfg, "text", None)
    if text is not None and getattr(text, "path", None):
        changes["text"] = dataclasses.replace(text, path=absolute(text.path))
    for name in ("image", "audio"):
        part = getattr(ucfg, name, None)
        weights = getattr(part, "weights", None)
        if isinstance(weights, str) and not weights.startswith("random:") and weights != "pretrained":
            changes[name] = dataclasses.replace(part, weights=absolute(weights))
    ucfg = dataclasses.replace(ucfg, **changes) if changes else ucfg
    return dataclasses.replace(cfg, out=absolute(cfg.out)), ucfg


def with_encode_batch(ucfg: UTIConfig, encode_batch: int | None) -> UTIConfig:
    """The codec config with --encode-batch set on its audio and image codecs (it wins over uti.yaml's
    per-codec `encode_batch:`), so the actors build them so and job.json's "config" records it. None
    keeps the yaml's value (or, where it has none, the device's default: uti.codecs.registry)."""
    if encode_batch is None:
        return ucfg
    changes = {m: dataclasses.replace(part, encode_batch=encode_batch)
               for m in MEDIA_MODALITIES if (part := getattr(ucfg, m, None)) is not None}
    return dataclasses.replace(ucfg, **changes) if changes else ucfg


def sized_for(cfg: TokenizeConfig, facts: CodecFacts) -> TokenizeConfig:
    """`cfg` with the chunk sizes it leaves open set for the encode batches the actors use (actor 0's
    policy: the flag, uti.yaml, or the device's default), as job.json's "arguments" records them."""
    batch = {m: int(p.get("encode_batch", 1)) for m, p in facts.encode_policy.items()}
    return cfg.sized(audio_batch=batch.get("audio", 1), image_batch=batch.get("image", 1))


def _space_on_driver(ucfg: UTIConfig):
    """Only for a rerun that is likely complete (no Ray started): the job's token space, on the CPU, from
    the codecs' remembered descriptors where there are some (uti.codecs.descriptors), else from loading them."""
    from uti.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(ucfg, device="cpu", modalities=("text",), describe=MEDIA_MODALITIES).space


def media_modalities(by_id: dict[str, ManifestRow]) -> tuple[str, ...]:
    """The media modalities the rows need: the actors load only those codecs (the token space names all)."""
    found: set[str] = set()
    for row in by_id.values():
        found.add(row.modality)
        if found.issuperset(MEDIA_MODALITIES):
            break
    return tuple(m for m in MEDIA_MODALITIES if m in found)


_CodecActors = CodecActors  # the name tests/test_tokenize_resources.py imports from here


def actors_for_plan(cfg: TokenizeConfig, ucfg: UTIConfig, plan: Plan, by_id: dict[str, ManifestRow]) -> CodecActors:
    """The job's codec actors, started: the codecs its rows need, capped by the plan's chunks (not its shards:
    one shard of many chunks keeps every actor busy)."""
    return CodecActors.launch(cfg, ucfg, chunks=count_chunks(cfg, plan.shards(), by_id),
                              modalities=media_modalities(by_id),
                              max_restarts=cfg.max_shard_failures * max(1, plan.num_shards))


def _looks_complete(out: str, plan: Plan) -> bool:
    """A finished run of this plan is there (its job.json written last): likely nothing to do, so Ray is
    not started ahead of the check. A wrong guess costs only the overlap of Ray's start with codec loading."""
    return has_job(out, flag="--out") and plan_matches(out, plan)


def run_tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    from uti.ray_local import as_received

    try:
        # OUT has one writer at a time: a second job into it is refused here, before Ray or any manifest read.
        with hold_lock(cfg.out, job="tokenize"):
            return _run_tokenize(cfg)
    except KeyboardInterrupt as exc:
        sent = as_received(exc)  # SIGTERM stays SIGTERM (exit 143) even when Ray re-raised it as Ctrl-C
        if sent is exc:
            raise
        raise sent from None


def _run_tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    command_started = time.time()
    cfg, ucfg = absolute_paths(cfg, load_config(cfg.config))
    ucfg = with_encode_batch(ucfg, cfg.encode_batch)
    ray_state = _RayState(cfg)
    rows, plan, codec_actors = _plan_while_ray_starts(cfg, ucfg, ray_state)
    log.info("planned %d rows into %d shards, %.1f s after the command started", plan.num_samples, plan.num_shards,
             time.time() - command_started)
    # The driver keeps each row once (dict copies of every row cost ~2 GB and 9 s more at 600k
    # rows); a chunk's ManifestRows are pickled as they are when its read task and actor call go out.
    by_id = {r.id: r for r in rows}
    del rows
    missed = set(media_modalities(by_id)) - set(codec_actors.modalities) if codec_actors is not None else set()
    if missed:
        log.info("the manifests also hold %s rows: restarting the codec actors with every codec they need",
                 " and ".join(sorted(missed)))
        codec_actors.kill()
        codec_actors = None
    started = time.time()
    run: RunResult | None = None
    earlier: EarlierShards | None = None
    progress = Progress("tokenize", unit="sample", done_word="encoded", every=cfg.progress_every,
                        enabled=cfg.progress)
    try:
        claim_plan(cfg.out, plan)  # a wrong --out fails before any codec starts
        if _looks_complete(cfg.out, plan):
            # Likely nothing to do: check it without starting Ray or, when remembered, loading any codec.
            space = _space_on_driver(ucfg)
        else:
            # The driver loads no codec: the first actor (on a GPU where there is one) fixes the token space.
            ray_state.start()
            codec_actors = (codec_actors or actors_for_plan(cfg, ucfg, plan, by_id)).wait_ready(progress)
            space = codec_actors.facts.space
            cfg = sized_for(cfg, codec_actors.facts)
            log.info("the first codec actor is ready, %.1f s after the command started", time.time() - command_started)
        claim_space(cfg.out, space)
        removed = remove_stale_temp_files(cfg.out)
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        done = completed_shards(cfg.out, space, plan)
        todo = [(split, shard) for split, shard in plan.shards() if (split, shard.name) not in done]
        orphans = _remove_orphans_of(cfg.out, todo)
        if done and todo:
            progress.say(resuming_message(plan, done))

        if todo:
            ray_state.start()
            if codec_actors is None:  # the guess "complete" was wrong
                codec_actors = actors_for_plan(cfg, ucfg, plan, by_id).wait_ready(progress)
                if codec_actors.facts.space.id != space.id:
                    raise JobError(f"the codec actor's token space {codec_actors.facts.space.short_id} differs "
                                   f"from the driver's {space.short_id}: the codec weights or libraries differ "
                                   "between nodes")
                cfg = sized_for(cfg, codec_actors.facts)
            earlier = earlier_shards(done, ((split, shard.name) for split, shard in plan.shards()),
                                     codec_actors.facts.encode_policy)
            if earlier is not None and earlier.message():
                progress.say(earlier.message())
            read_args = {**_read_args(codec_actors.facts, ucfg), **prepare_args(prepare_on(cfg, codec_actors.request))}
            running, codec_actors = codec_actors, None  # _run_chunks owns them now (and kills them when done)
            run = _run_chunks(cfg, space, plan, todo, by_id, read_args=read_args, codec_actors=running,
                              command_started=command_started, progress=progress, owns_ray=bool(ray_state.owned))
            # A writer killed mid-shard leaves its temp files; the shard was redone, so they are garbage.
            remove_stale_temp_files(cfg.out)
    finally:
        progress.close()
        if codec_actors is not None:
            codec_actors.kill()
        ray_state.stop()
    job = _finish(cfg, ucfg, space, plan, run, skipped=len(done), wrote=bool(todo), orphans=orphans,
                  times=(command_started, started, time.time()), earlier=earlier)
    # Over the whole run, as the progress line said it for its last interval (every caller: CLI, demo, bench).
    # Not for a run of a few seconds: there the first read's imports are most of the wait, and no flag helps.
    if run is not None and run.processing_seconds >= IDLE_MIN_SECONDS:
        idle = idle_message(job["actors"]["feed"]["actors_idle_fraction"], reads_in_actors=bool(run.reads_in_actors),
                            read_cpus=cfg.read_cpus)
        if idle:
            progress.say(idle)
    return job


def _finish(cfg: TokenizeConfig, ucfg: UTIConfig, space, plan: Plan, run: RunResult | None, *, skipped: int,
            wrote: bool, orphans, times: tuple[float, float, float],
            earlier: EarlierShards | None = None) -> dict[str, Any]:
    """After the work: every planned shard is there, job.json summarizes the run (a rerun with nothing to
    do keeps the summary of the run that did the work), and a run that tokenized nothing is an error."""
    command_started, started, finished = times
    refs = completed_shards(cfg.out, space, plan)
    missing = [f"{s}/{sh.name}" for s, sh in plan.shards() if (s, sh.name) not in refs]
    if missing:
        raise JobError(f"shards missing after the run: {missing[:5]}; rerun the same command to finish them")
    errors = merge_errors(cfg.out, refs.values())
    clock = Timings(command_started=command_started, started=started, finished=finished,
                    startup_seconds=run.startup_seconds if run else None)
    job = JobSummary.of_run(cfg, ucfg, token_space_id=space.id, plan=plan, refs=refs, errors=errors,
                            run=run or empty_run(), skipped=skipped, times=clock,
                            driver_peak_rss_mb=round(peak_rss_mb(), 1), orphans=orphans, earlier=earlier).to_json()
    if wrote or not has_job(cfg.out, flag="--out"):
        write_job(cfg.out, job)
    if job["counts"]["samples"] == 0:
        raise JobError(_nothing_tokenized(cfg.out, errors))
    return job


def resuming_message(plan: Plan, done) -> str:
    """What a rerun finds: "resuming: 1 of 4 shards complete (1,000 samples), 3 to do (3,000 samples)"."""
    shards = list(plan.shards())
    kept = [shard for split, shard in shards if (split, shard.name) in done]
    rest = [shard for split, shard in shards if (split, shard.name) not in done]
    return (f"resuming: {len(kept)} of {len(shards)} shards complete ({sum(s.num_samples for s in kept):,} samples), "
            f"{len(rest)} to do ({sum(s.num_samples for s in rest):,} samples)")


def _read_args(facts: CodecFacts, ucfg: UTIConfig) -> dict[str, Any]:
    """What every read task needs: the codecs' input formats, the limits, and why a modality has no range."""
    space = facts.space
    return {"sample_rate": facts.sample_rate, "channels": facts.channels, "proc_size": facts.proc_size,
            "limits": ucfg.limits,
            "no_range": {m: missing_modality_message(space, m) for m in ("audio", "image", "text")
                         if not space.has_modality(m)}}


def _remove_orphans_of(out: str, todo) -> list:
    """Delete what an interrupted run left of the shards this run redoes (sharding.orphans), and say so."""
    from sharding.orphans import find_orphan_objects, remove_orphan_objects

    if not todo:
        return []
    removed = remove_orphan_objects(out, find_orphan_objects(out, {(split, shard.name) for split, shard in todo}))
    if removed:
        log.warning("removed %d orphan object(s) of shards an interrupted run left unfinished (redone now): %s",
                    len(removed), ", ".join(f"{o.url} ({o.kind})" for o in removed[:5]))
    return removed


class _RayState:
    """Starts Ray (or joins --address) at most once, and shuts down only what it started."""

    def __init__(self, cfg: TokenizeConfig):
        self.cfg = cfg
        self.attempted = False
        self.owned = False

    def start(self) -> None:
        from uti.ray_local import connect

        if self.attempted:
            return
        self.attempted = True
        cfg = self.cfg
        n_cpus = local_num_cpus(cfg, os.cpu_count() or 1)
        self.owned = connect(cfg.address, dashboard=cfg.dashboard, num_cpus=None if cfg.address else n_cpus)

    def stop(self) -> None:
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False


def _nothing_tokenized(out: str, errors: list[dict]) -> str:
    """The error for a run whose every sample failed: where the details are and the commonest causes."""
    reasons = collections.Counter(e["reason"] for e in errors).most_common()
    top = ", ".join(f"{reason} ({n})" for reason, n in reasons[:3])
    example = next((e for e in errors if e["reason"] == reasons[0][0]), None) if reasons else None
    detail = f"; e.g. {example['id']}: {example.get('detail') or example['reason']}" if example else ""
    return (f"no sample was tokenized: all {len(errors)} rows failed ({top}){detail}. Every failure is listed in "
            f"{out}/{ERRORS_NAME}; fix the inputs or the config's limits and rerun")


def _run_chunks(cfg, space, plan: Plan, todo, by_id: dict[str, ManifestRow], *, read_args,
                codec_actors: CodecActors, command_started: float, progress: Progress,
                owns_ray: bool = False) -> RunResult:
    """Runs the chunk scheduler on the started actors (actor 0 loaded already), and kills them when done."""
    import ray
    from ray.exceptions import RayError

    try:
        try:
            first_info = ray.get(codec_actors.actors[0].info.remote())  # loaded already: its codecs fixed the space
        except RayError as exc:
            raise JobError(f"the first codec actor failed: {short_error(exc)}") from None
        # Work starts on actor 0 now; each other one joins once its codecs are loaded (its first ping answers
        # with the same token space), so a slow or never-scheduled actor delays nothing (its wait is explained
        # after a grace period).
        scheduler = ChunkScheduler(cfg=cfg, plan=plan, todo=todo, row_of=by_id.__getitem__, space=space,
                                   read_args=read_args, request=codec_actors.request, actors=codec_actors.actors,
                                   starts=codec_actors.starts, first_info=first_info,
                                   command_started=command_started, progress=progress, owns_ray=owns_ray)
        return scheduler.run()
    finally:
        # Stopped early (Ctrl-C, SIGTERM, a failed shard) or done: no actor keeps running on a cluster.
        codec_actors.kill()


def count_chunks(cfg: TokenizeConfig, shards, by_id: dict[str, ManifestRow], *, at_most: int = 1024) -> int:
    """How many chunks these shards make (counting stops at `at_most`: it only caps the number of actors)."""
    total = 0
    for split, shard in shards:
        total += len(shard_chunks(split, shard, by_id.__getitem__, batch_seconds=cfg.chunk_seconds,
                                  max_images=cfg.chunk_images))
        if total >= at_most:
            break
    return max(1, total)
