"""`uti tokenize`: manifests -> a tokenized dataset, on a laptop or a GPU cluster, exactly once.

Shards are the unit of work. The driver plans them, skips the ones already complete, and feeds the
rest to a pool of codec actors. CPU read tasks decode and resample a shard's media ahead of its actor:
the first wave while the actors load their codecs, then each shard's reads when it is queued on an
actor (on that actor's node), while the actor is still encoding its previous shard.
A failed shard (actor killed, node lost, writer error) is retried on a restarted actor; after
`max_shard_failures` failures of the same shard the job stops and names it. Ctrl-C or SIGTERM (raised
as KeyboardInterrupt, see uti.ray_local) cancels the read tasks and kills the actors; a shard cut short
leaves only temp files, which the rerun removes. A run in which no sample could be tokenized is an
error, raised after errors.jsonl and job.json are written so the reasons can be read.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import platform
import time
from typing import Any, Iterable

from ray_jobs.config import TokenizeConfig
from ray_jobs.resources import PENDING_GRACE_SECONDS, Request, local_num_cpus, resolve, waiting_reason
from ray_jobs.outputs import (ERRORS_NAME, JOB_NAME, PLAN_NAME, JobError, claim_plan, claim_space, completed_shards, merge_errors,
                              read_bytes, remove_stale_temp_files, write_job)
from ray.exceptions import ActorUnavailableError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sharding.manifest import ManifestRow, manifest_sha256, manifests_sha256, read_manifests
from sharding.plan import Plan, make_plan
from uti import __version__
from uti.config import UTIConfig, load_config
from uti.strict import to_dict
from uti.token_space import missing_modality_message

log = logging.getLogger(__name__)
QUEUE_PER_ACTOR = 2  # one shard encoding, one whose media is being read ahead


def plan_job(cfg: TokenizeConfig) -> tuple[list[ManifestRow], Plan]:
    rows = read_manifests(list(cfg.manifests))
    if not rows:
        raise JobError(f"the manifests {', '.join(cfg.manifests)} hold no rows: nothing to tokenize; make one with "
                       "`uti manifest --dataset NAME --root DIR --out FILE`")
    target_samples = cfg.shard_samples if cfg.shard_samples or cfg.shard_seconds else 1000
    plan = make_plan(rows, manifest_sha256=manifests_sha256(list(cfg.manifests)),
                     target_samples=target_samples, target_seconds=cfg.shard_seconds)
    return rows, plan


def chunk_rows(rows: list[dict], *, batch_seconds: float, max_images: int) -> list[list[dict]]:
    """Consecutive rows grouped so a chunk holds about batch_seconds of audio or max_images images."""
    chunks: list[list[dict]] = []
    current: list[dict] = []
    seconds = images = 0.0
    for row in rows:
        cost = row.get("duration") or 0.0
        if current and (seconds + cost > batch_seconds or images >= max_images):
            chunks.append(current)
            current, seconds, images = [], 0.0, 0
        current.append(row)
        seconds += cost if row["modality"] == "audio" else 0.0
        images += row["modality"] == "image"
    if current:
        chunks.append(current)
    return chunks


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


@dataclasses.dataclass(kw_only=True, frozen=True)
class CodecFacts:
    """What the driver needs to know of the codecs: the token space and the read tasks' target formats."""

    space: Any  # uti.token_space.TokenSpace
    sample_rate: int
    channels: int
    proc_size: int

    @classmethod
    def from_dict(cls, data: dict) -> "CodecFacts":
        from uti.token_space import TokenSpace

        return cls(space=TokenSpace.from_json_bytes(data["token_space_json"], where="first codec actor's token space"),
                   sample_rate=data["sample_rate"], channels=data["channels"], proc_size=data["proc_size"])


def _codec_facts_on_driver(ucfg: UTIConfig) -> CodecFacts:
    """Only for a rerun that is likely complete (no Ray started): the codecs are loaded once, on the CPU."""
    from uti.tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer(ucfg, device="cpu")
    return CodecFacts(space=tok.space, sample_rate=tok.audio.sample_rate if tok.audio else 0,
                      channels=tok.audio.channels if tok.audio else 0,
                      proc_size=tok.image.proc_size[0] if tok.image else 0)


@dataclasses.dataclass(kw_only=True)
class _FirstActor:
    """The job's first codec actor, started before the work is known: it loads every configured codec and
    its token space is the job's. Checked against the cluster's resources first, like every actor."""

    actor: Any
    facts: CodecFacts

    @classmethod
    def start(cls, cfg: TokenizeConfig, ucfg: UTIConfig, plan: Plan) -> "_FirstActor":
        import ray
        from ray.exceptions import RayError

        request = resolve(cfg, ray.cluster_resources(), shards=plan.num_shards)
        actor = _new_actor(cfg, ucfg, request, 0, space_json=None, modalities=("audio", "image"),
                           max_restarts=cfg.max_shard_failures * plan.num_shards)
        try:
            ref = actor.codec_facts.remote()
            waiting = _Waiting(request)
            while not ray.wait([ref], timeout=1.0)[0]:
                waiting.check(actors_pending=1, reads_pending=False, show=None)
            return cls(actor=actor, facts=CodecFacts.from_dict(ray.get(ref)))
        except RayError as exc:
            _kill(actor)
            raise JobError(f"the first codec actor failed to start: {_short(exc)}") from None
        except BaseException:
            _kill(actor)
            raise

    def kill(self) -> None:
        _kill(self.actor)


def _kill(actor) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead is fine
        pass


def _new_actor(cfg: TokenizeConfig, ucfg: UTIConfig, request: Request, index: int, *, space_json: bytes | None,
               modalities: tuple[str, ...], max_restarts: int):
    import ray

    from ray_jobs.actor import CodecWorker

    return ray.remote(CodecWorker).options(
        name=actor_name(cfg.out, index), num_cpus=request.cpus_per_actor, num_gpus=request.gpus_per_actor,
        max_restarts=max_restarts, max_task_retries=0,
        scheduling_strategy="SPREAD",  # one node going away takes as few actors with it as possible
    ).remote(config=to_dict(ucfg), token_space_json=space_json, out=cfg.out, device=request.device,
             threads=max(1, int(request.cpus_per_actor)), modalities=modalities)


def _looks_complete(out: str, plan: Plan) -> bool:
    """A finished run of this plan is there (its job.json written last): likely nothing to do, so Ray is
    not started ahead of the check. A wrong guess costs only the overlap of Ray's start with codec loading."""
    return read_bytes(out, JOB_NAME) is not None and read_bytes(out, PLAN_NAME) == plan.to_bytes()


def run_tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    from uti.ray_local import as_received

    try:
        return _run_tokenize(cfg)
    except KeyboardInterrupt as exc:
        sent = as_received(exc)  # SIGTERM stays SIGTERM (exit 143) even when Ray re-raised it as Ctrl-C
        if sent is exc:
            raise
        raise sent from None


def _run_tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    command_started = time.time()
    cfg, ucfg = absolute_paths(cfg, load_config(cfg.config))
    rows, plan = plan_job(cfg)
    # The driver keeps each row once (no dict copies of every row); a shard's rows become plain dicts only
    # when the shard is sent out (issue 12: ~2 GB and 9 s more at 600k rows).
    by_id = {r.id: r for r in rows}
    # Actors load only the codecs these rows need; each is still checked against the full space.
    media = tuple(sorted({r.modality for r in rows} & {"audio", "image"}))
    del rows
    started = time.time()
    ray_state = _RayState(cfg)
    first: _FirstActor | None = None
    startup: list[float | None] = [None]  # set by _run_shards when the first shard goes out
    actors_started = [0]  # set by _run_shards
    try:
        claim_plan(cfg.out, plan)  # a wrong --out fails before Ray or any codec starts
        if _looks_complete(cfg.out, plan):
            # Likely nothing to do: check it without starting Ray, loading the codecs here on the CPU.
            facts = _codec_facts_on_driver(ucfg)
        else:
            # The driver loads no codec: the first actor (on a GPU where there is one) fixes the token space.
            ray_state.start()
            first = _FirstActor.start(cfg, ucfg, plan)
            facts = first.facts
        space = facts.space
        claim_space(cfg.out, space)
        removed = remove_stale_temp_files(cfg.out)
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        done = completed_shards(cfg.out, space, plan)
        todo = [(split, shard) for split, shard in plan.shards() if (split, shard.name) not in done]
        read_args = {"sample_rate": facts.sample_rate, "channels": facts.channels, "proc_size": facts.proc_size,
                     "limits": to_dict(ucfg.limits),
                     "no_range": {m: missing_modality_message(space, m) for m in ("audio", "image", "text")
                                  if not space.has_modality(m)}}

        stats: list[dict] = []
        failures: collections.Counter = collections.Counter()
        actor_info: list[dict] = []
        processing = 0.0
        if todo:
            ray_state.start()
            if first is None:  # the guess "complete" was wrong
                first = _FirstActor.start(cfg, ucfg, plan)
                if first.facts.space.id != space.id:
                    raise JobError(f"the codec actor's token space {first.facts.space.short_id} differs from the "
                                   f"driver's {space.short_id}: the codec weights or libraries differ between nodes")
            actor, first = first.actor, None  # _run_shards owns it now (and kills it when done)
            stats, failures, actor_info, processing = _run_shards(
                cfg, ucfg, space, plan, todo, by_id, read_args=read_args, media=media, first_actor=actor,
                command_started=command_started, startup=startup, actors_started=actors_started)
            # A writer killed mid-shard leaves its temp files; the shard was redone, so they are garbage.
            remove_stale_temp_files(cfg.out)
    finally:
        if first is not None:
            first.kill()
        ray_state.stop()
    finished = time.time()

    refs = completed_shards(cfg.out, space, plan)
    missing = [f"{s}/{sh.name}" for s, sh in plan.shards() if (s, sh.name) not in refs]
    if missing:
        raise JobError(f"shards missing after the run: {missing[:5]}; rerun the same command to finish them")
    errors = merge_errors(cfg.out, refs.values())
    job = _summary(cfg, ucfg, space, plan, refs, errors, stats, failures, actor_info, processing, skipped=len(done),
                   actors_started=actors_started[0])
    # Each timing named for what it measures (until issue 12, `wall_seconds` held the processing time).
    job["throughput"].update({
        "wall_seconds": finished - command_started,  # the whole command: manifests, plan, Ray, codecs, work
        "startup_seconds": startup[0],  # command start -> first shard sent to a loaded codec actor (None: no work)
        "total_seconds_with_startup": finished - started,  # Ray start (after planning) -> end, as before
    })
    job["driver_peak_rss_mb"] = round(_peak_rss_mb(), 1)
    if todo or read_bytes(cfg.out, JOB_NAME) is None:
        write_job(cfg.out, job)  # a rerun with nothing to do keeps the summary of the run that did the work
    if job["counts"]["samples"] == 0:
        raise JobError(_nothing_tokenized(cfg.out, errors))
    return job


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


def actor_name(out: str, index: int) -> str:
    """Named per output folder so operators (and fault-injection tests) can find a run's actors."""
    import hashlib

    return f"uti-tokenize-{hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:10]}-{index}"


def _run_shards(cfg, ucfg: UTIConfig, space, plan: Plan, todo, by_id: dict[str, ManifestRow], *, read_args, media,
                first_actor, command_started: float, startup: list, actors_started: list):
    """Returns (per-shard stats, failures, actor info, processing seconds from actors ready to done).
    `first_actor` (index 0, already loaded) is used, and killed when done, like the ones started here."""
    import ray
    from ray.exceptions import RayError

    from ray_jobs.read import read_rows

    actors: list = [first_actor]
    prefetched: dict[tuple[str, str], list] = {}  # read tasks started before their shard was queued
    reading: dict[tuple[str, str], list] = {}  # read tasks of the shards queued on actors
    try:
        # Checked before anything starts: a request the cluster can never run fails now, naming the flag.
        request = resolve(cfg, ray.cluster_resources(), shards=len(todo))
        n_actors, gpus = request.num_actors, request.gpus_per_actor
        log.info("%d codec actors (%g CPU, %g GPU each), read tasks of %g CPU", n_actors, request.cpus_per_actor,
                 gpus, request.read_cpus)
        actors += [_new_actor(cfg, ucfg, request, i, space_json=space.canonical_json(), modalities=media,
                              max_restarts=cfg.max_shard_failures * max(1, len(todo)))
                   for i in range(1, n_actors)]
        reader = ray.remote(read_rows)

        def read(rows: list[dict], node: str | None) -> list:
            # Decoded audio is ~10x its file: read where the consuming actor runs (soft: any node will do).
            opts: dict[str, Any] = {"num_cpus": cfg.read_cpus, "max_retries": 3}
            if node is not None:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
            return [reader.options(**opts).remote(chunk, **read_args) for chunk in
                    chunk_rows(rows, batch_seconds=cfg.batch_seconds, max_images=cfg.max_images_per_batch)]

        # The first wave of reads starts now, while the other actors are still loading their codecs.
        prefetched.update({(split, shard.name): read([by_id[x].to_dict() for x in shard.ids], None)
                           for split, shard in todo[: n_actors * QUEUE_PER_ACTOR]})
        waiting = _Waiting(request)
        try:
            actor_info = [ray.get(first_actor.info.remote())]  # loaded already: its codecs fixed the space
        except RayError as exc:
            raise JobError(f"the first codec actor failed: {_short(exc)}") from None
        # Work starts on the first actor now; each other one joins once its codecs are loaded (its first ping
        # answers), so a slow or never-scheduled actor delays nothing (its wait is explained after a grace).
        nodes: list[str | None] = [actor_info[0]["node"]] + [None] * (len(actors) - 1)
        actors_started[0] = len(actors)
        processing_started = time.time()
        pool = _ActorPool(actors, starting=range(1, len(actors)))
        progress = _Progress(plan, todo, enabled=cfg.progress)
        queue = collections.deque(todo)
        failures: collections.Counter = collections.Counter()
        stats: list[dict] = []
        resubmitted = 0

        def submit(i: int) -> None:
            split, shard = queue.popleft()
            rows = [by_id[x].to_dict() for x in shard.ids]
            # Read tasks start now (if not already), while actor i still encodes its previous shard.
            chunks = prefetched.pop((split, shard.name), None) or read(rows, nodes[i])
            reading[(split, shard.name)] = chunks
            ref = actors[i].tokenize_shard.remote(split=split, shard=shard.name, rows=rows, chunks=chunks,
                                                  extra={"plan_sha256": plan.sha256}, token_space_id=space.id)
            if startup[0] is None:
                startup[0] = time.time() - command_started
                log.info("start-up: first shard sent to a codec actor %.1f s after the command started "
                         "(driver peak RSS %.0f MB)", startup[0], _peak_rss_mb())
            pool.assign(ref, i, (split, shard))

        try:
            while queue or pool.busy:
                for i in pool.free_slots(QUEUE_PER_ACTOR):
                    if not queue:
                        break
                    submit(i)
                pool.ping_recovering()
                events = pool.wait(timeout=1.0)
                if events:
                    waiting.progressed()
                else:
                    reads_done, reads_left = _read_counts(reading)
                    waiting.reads_finished(reads_done)
                    waiting.check(actors_pending=len(pool.starting), reads_pending=reads_left > 0,
                                  show=progress.note)
                for kind, i, payload, outcome in events:
                    if kind == "ping":
                        if isinstance(outcome, dict):
                            nodes[i] = outcome["node"]  # a restarted actor may live on another node now
                            if i in pool.starting:
                                pool.starting.discard(i)
                                actor_info.append(outcome)
                        elif i in pool.starting and not isinstance(outcome, ActorUnavailableError):
                            # e.g. its codecs differ from the first actor's: refused, not silently dropped.
                            raise JobError(f"codec actor {i} failed to start: {_short(outcome)}")
                        continue
                    split, shard = payload
                    reading.pop((split, shard.name), None)
                    if not isinstance(outcome, Exception):
                        stats.append(outcome)
                        progress.update(outcome)
                        continue
                    queue.appendleft((split, shard))
                    resubmitted += 1
                    if isinstance(outcome, ActorUnavailableError):
                        continue  # never started: the actor was restarting, not this shard's fault
                    key = f"{split}/{shard.name}"
                    failures[key] += 1
                    log.warning("shard %s failed (%d/%d): %s", key, failures[key], cfg.max_shard_failures, _short(outcome))
                    if failures[key] >= cfg.max_shard_failures:
                        raise JobError(
                            f"shard {key} failed {failures[key]} times; last error: {_short(outcome)}. "
                            f"Its rows are listed in {cfg.out}/plan.json; fix the cause and rerun the same "
                            "command: completed shards are kept")
                if pool.all_dead():
                    raise JobError("every codec actor died and could not be restarted; see the Ray logs "
                                   "(`ray logs`) for the cause, then rerun the same command")
        finally:
            progress.close()
        failures["__resubmitted__"] = resubmitted
        return stats, failures, actor_info, time.time() - processing_started
    finally:
        # Stopped early (Ctrl-C, SIGTERM, a failed shard): nothing keeps reading or encoding on a cluster.
        # An actor killed mid-shard leaves only temp files, which the next run removes.
        for chunks in [*prefetched.values(), *reading.values()]:
            for ref in chunks:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - finished or already gone is fine
                    pass
        for actor in actors:
            _kill(actor)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _read_counts(reading: dict) -> tuple[int, int]:
    """(finished, unfinished) read tasks of the shards queued on actors."""
    import ray

    refs = [ref for chunks in reading.values() for ref in chunks]
    if not refs:
        return 0, 0
    ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=0)
    return len(ready), len(not_ready)


class _Waiting:
    """Shows why nothing has progressed (no shard written, no read task finished, an actor still not up) for
    PENDING_GRACE_SECONDS: on the progress line and once in the log (progress bars are off in CI logs).
    Resources are read only once the grace period is over."""

    def __init__(self, request: Request, *, grace: float = PENDING_GRACE_SECONDS):
        self.request = request
        self.grace = grace
        self.since = time.time()
        self.last_reason: str | None = None
        self._reads_seen = 0

    def progressed(self) -> None:
        self.since = time.time()

    def reads_finished(self, count: int) -> None:
        """A read task finishing is progress too: a shard of 1000 samples takes longer than the grace."""
        if count != self._reads_seen:
            self._reads_seen = count
            self.progressed()

    def check(self, *, actors_pending: int, reads_pending: bool, show) -> None:
        import ray

        if time.time() - self.since < self.grace or not (actors_pending or reads_pending):
            return
        reason = waiting_reason(actors_pending=actors_pending, reads_pending=reads_pending, request=self.request,
                                available=ray.available_resources(), total=ray.cluster_resources())
        if reason and reason != self.last_reason:
            log.warning("%s", reason)
        self.last_reason = reason
        if show is not None:
            show(reason or "")


class _ActorPool:
    """Tracks which actor runs what. An actor whose call failed is 'recovering' (Ray restarts it) and
    gets no new work until a ping succeeds; pings back off so a restarting actor is not hammered."""

    def __init__(self, actors: list, *, starting: Iterable[int] = ()):
        self.actors = actors
        self.inflight: dict[Any, tuple[str, int, Any]] = {}
        self.load = [0] * len(actors)
        # Actors still loading their codecs are pinged like recovering ones: the answer comes once loaded.
        self.starting: set[int] = set(starting)
        self.recovering: dict[int, float] = {i: 0.0 for i in self.starting}  # actor -> time of the next ping
        self.pinging: set[int] = set()
        self.dead: set[int] = set()

    @property
    def busy(self) -> bool:
        return any(kind == "shard" for kind, _, _ in self.inflight.values())

    def free_slots(self, per_actor: int) -> list[int]:
        ready = [i for i in range(len(self.actors)) if i not in self.recovering and i not in self.dead]
        slots = []
        for i in sorted(ready, key=lambda k: self.load[k]):
            slots += [i] * max(0, per_actor - self.load[i])
        return slots

    def assign(self, ref, i: int, payload) -> None:
        self.inflight[ref] = ("shard", i, payload)
        self.load[i] += 1

    def ping_recovering(self) -> None:
        now = time.time()
        for i, when in list(self.recovering.items()):
            if i not in self.pinging and now >= when:
                self.inflight[self.actors[i].info.remote()] = ("ping", i, None)
                self.pinging.add(i)

    def all_dead(self) -> bool:
        return len(self.dead) == len(self.actors)

    def wait(self, timeout: float) -> list[tuple[str, int, Any, Any]]:
        import ray
        from ray.exceptions import ActorDiedError, RayError

        if not self.inflight:
            time.sleep(min(timeout, 0.2))
            return []
        ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=timeout)
        events = []
        for ref in ready:
            kind, i, payload = self.inflight.pop(ref)
            try:
                outcome = ray.get(ref)
            except RayError as exc:
                outcome = exc
            if kind == "shard":
                self.load[i] -= 1
            else:
                self.pinging.discard(i)
            if isinstance(outcome, Exception) and isinstance(outcome, (ActorUnavailableError, ActorDiedError)):
                if isinstance(outcome, ActorDiedError) and "restart" not in str(outcome).lower() and kind == "ping":
                    self.dead.add(i)
                    self.recovering.pop(i, None)
                else:
                    backoff = 0.5 if i not in self.recovering else 1.0
                    self.recovering[i] = time.time() + backoff
            elif kind == "ping":
                self.recovering.pop(i, None)
            events.append((kind, i, payload, outcome))
        return events


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    cause = [line for line in text if "Error" in line or "error" in line]
    return (cause[-1] if cause else (text[-1] if text else type(exc).__name__))[:300]


class _Progress:
    def __init__(self, plan: Plan, todo, *, enabled: bool):
        from tqdm import tqdm

        total = sum(shard.num_samples for _, shard in todo)
        self.shards_total = len(todo)
        self.shards = 0
        self.audio = 0.0
        self.images = 0
        self.tokens = 0
        self.t0 = time.time()
        self.postfix = ""
        # disable=None: a bar on a terminal, nothing in CI logs.
        self.bar = tqdm(total=total, unit="sample", desc="tokenize", disable=None if enabled else True,
                        dynamic_ncols=True)

    def update(self, r: dict) -> None:
        self.shards += 1
        self.audio += r["audio_seconds"]
        self.images += r["images"]
        self.tokens += r["media_tokens"] + r["text_tokens"]
        rate = self.tokens / max(time.time() - self.t0, 1e-9)
        self.postfix = (f"shards {self.shards}/{self.shards_total} audio {self.audio / 3600:.2f} h "
                        f"images {self.images} {rate:,.0f} tok/s")
        self.bar.set_postfix_str(self.postfix, refresh=False)
        self.bar.update(r["num_samples"] + r["num_errors"])

    def note(self, text: str) -> None:
        """A reason for waiting on the progress line (empty: clear it)."""
        self.bar.set_postfix_str(text or self.postfix, refresh=True)

    def close(self) -> None:
        self.bar.close()


def _summary(cfg, ucfg, space, plan: Plan, refs, errors, stats, failures, actor_info, processing, *,
             skipped, actors_started: int) -> dict:
    import torch

    by_split: dict[str, dict[str, int]] = {}
    for (split, _), ref in sorted(refs.items()):
        entry = by_split.setdefault(split, {"samples": 0, "errors": 0})
        entry["samples"] += ref.index["num_samples"]
        entry["errors"] += len(ref.index.get("errors", []))
    by_modality: dict[str, int] = collections.Counter()
    reasons: dict[str, int] = collections.Counter()
    for s in stats:
        by_modality.update(s["modalities"])
        reasons.update(s["error_reasons"])
    audio_s = sum(s["audio_seconds"] for s in stats)
    images = sum(s["images"] for s in stats)
    tokens = sum(s["media_tokens"] + s["text_tokens"] for s in stats)
    # Each modality's rate is over the time its shards were being encoded, not the whole job's: in a job
    # of long audio and a few images, images/s over the whole run said nothing about the image codec.
    audio_span = _span([s for s in stats if s["audio_seconds"] > 0])
    image_span = _span([s for s in stats if s["images"] > 0])
    busy_by_pid: dict[int, float] = collections.Counter()
    for s in stats:
        busy_by_pid[s["pid"]] += s["busy"]
    n_actors = max(1, len(actor_info))
    return {
        "format": "uti.job", "version": 1, "producer": f"uti {__version__}", "complete": True,
        "token_space_id": space.id,
        "manifests": [{"path": os.path.abspath(p), "sha256": manifest_sha256(p)} for p in cfg.manifests],
        "manifest_sha256": plan.manifest_sha256, "plan_sha256": plan.sha256,
        "config": to_dict(ucfg), "arguments": to_dict(cfg),
        "counts": {
            "planned": plan.num_samples, "samples": sum(v["samples"] for v in by_split.values()),
            "errors": len(errors), "by_split": by_split,
            "by_modality_this_run": dict(by_modality), "error_reasons_this_run": dict(reasons),
            "shards": {"total": plan.num_shards, "skipped_complete": skipped, "written": len(stats)},
        },
        "throughput": {
            "processing_seconds": processing,  # codec actors loaded -> last shard written
            "audio_seconds": audio_s, "images": images,
            "audio_span_seconds": audio_span, "image_span_seconds": image_span,
            "audio_seconds_per_second": audio_s / audio_span if audio_span else 0.0,
            "images_per_second": images / image_span if image_span else 0.0,
            "tokens_per_second": tokens / processing if processing else 0.0,
        },
        "actors": {
            # Started; `ready`: those whose codecs loaded before the work ran out (a late one joins no shard).
            "count": actors_started, "ready": len(actor_info),
            "device": actor_info[0]["device"] if actor_info else None,
            "busy_fraction": sum(busy_by_pid.values()) / (n_actors * processing) if processing and stats else 0.0,
            "busy_seconds_by_pid": {str(k): v for k, v in busy_by_pid.items()},
            "read_wait_seconds": sum(s["wait"] for s in stats),
        },
        "retries": failures.pop("__resubmitted__", 0), "failures_by_shard": dict(failures),
        "versions": {"uti": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "ray": __import__("ray").__version__},
    }


def _span(stats: list[dict]) -> float:
    """Seconds from the first of these shards starting to the last one finishing (on any actor)."""
    if not stats:
        return 0.0
    return max(s["finished_at"] for s in stats) - min(s["started_at"] for s in stats)
