"""The tokenize scheduler: chunks to codec actors, whole shards to writer tasks.

The driver walks the plan's shards in order and cuts each into chunks (ray_jobs.chunks). A chunk's media
is read by a CPU task (or, for CPU actors, by the actor itself: ray_jobs.resources) and encoded by
whichever codec actor has a free slot; each actor holds at most QUEUE_PER_ACTOR chunks (one encoding, the
next one queued, its media read ahead where read tasks feed the actor), which bounds the decoded media in
the object store whatever the dataset's size (backpressure). When every chunk of a shard is encoded, a
writer task commits the shard (tar, then index last). A failed chunk is redone alone (on any actor); a
failed writer is rerun from the same encoded chunks, or the shard's chunks are redone if those were lost.
Exactly-once and resume stay per shard: a shard exists once its index does.

The tail of the job (every shard cut into chunks: for a one-shard job, all of it) is scheduled
differently: the largest chunks go first and an actor gets its next chunk only when it is free, while the
reads of the next chunks go ahead unassigned. Handing each actor two chunks in plan order would leave one
actor idle at the end while another still has a long chunk queued (measured: two actors busy 90% of a
one-shard job). Before the tail, plan order keeps the shards completing one after the other, so the encoded chunks
held for their writers stay few.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Iterator

from ray_jobs.actors import ActorStarts
from ray_jobs.chunks import (ChunkRef, ChunkStats, ShardResult, bucketed_chunks, prepare_writer, shard_chunks,
                             write_shard_task)
# Waiting and peak_rss_mb are imported from here by other modules too.
from ray_jobs.diagnostics import TokenizeProgress, Waiting, actor_start_error, peak_rss_mb, short_error
from ray_jobs.events import ActorLoss, ChunkDone, PingDone, WriterDone
from ray_jobs.outputs import JobError
from ray_jobs.policy import check_actor_policy, shard_policy
from ray_jobs.resources import Request
from sharding.manifest import ManifestRow
from sharding.outdir import PLAN_NAME, path_of
from uti.progress import Progress

log = logging.getLogger(__name__)
QUEUE_PER_ACTOR = 2  # one chunk encoding, the next one queued (its media read ahead by a read task, if any)


@dataclasses.dataclass(kw_only=True)
class RunResult:
    """What a scheduler run did, for job.json and the progress summary."""

    shards: list[ShardResult]
    chunks: list[ChunkStats]
    failures_by_shard: dict[str, int]
    chunk_retries: int  # chunks sent again (actor killed or restarting, chunk error)
    writer_retries: int  # writer tasks run again
    actor_info: list[dict]
    actors_started: int
    processing_seconds: float  # first codec actor ready -> last shard committed
    startup_seconds: float | None  # command start -> first chunk sent to a loaded codec actor
    reads_in_actors: bool | None  # the actors read their chunks' media themselves (no read tasks); None: no run
    # The figures of job.json's actors.per_actor and feed (ray_jobs.feed), all on the driver's clock:
    actors_by_pid: dict[int, dict] = dataclasses.field(default_factory=dict)  # info + "ready_at" (codecs loaded)
    last_chunk_at: float | None = None  # the job's last chunk came back
    chunk_read_seconds: list[float] = dataclasses.field(default_factory=list)  # by `chunks`: time spent reading it
    encode_policy: dict[str, dict] | None = None  # {modality: policy} of actor 0, the same as every actor's


@dataclasses.dataclass(kw_only=True)
class _OpenShard:
    """A shard some of whose chunks are encoded: their results stay in the object store until it is written."""

    split: str
    shard: Any  # sharding.plan shard: name, ids
    chunks: list[ChunkRef]
    modalities: frozenset[str] = frozenset()  # of its rows: the encode policies its header records
    encoded: dict[int, Any] = dataclasses.field(default_factory=dict)  # chunk index -> EncodedChunk ref

    @property
    def key(self) -> str:
        return f"{self.split}/{self.shard.name}"

    @property
    def complete(self) -> bool:
        return len(self.encoded) == len(self.chunks)


class ChunkScheduler:
    """Runs the plan's unfinished shards on the given codec actors. `actors[0]` is loaded already (its
    `first_info` known); the others join once their first ping answers."""

    def __init__(self, *, cfg, plan, todo, row_of, space, read_args: dict, request: Request, actors: list,
                 first_info: dict, command_started: float, starts: "ActorStarts | None" = None,
                 progress: Progress | None = None, owns_ray: bool = False):
        self.cfg = cfg
        self.owns_ray = owns_ray  # a private local instance, shut down when the job ends (see _cancel)
        self.plan = plan
        self.todo = todo
        self.row_of = row_of
        self.space = space
        self.read_args = read_args
        self.request = request
        self.inline_reads = request.reads_in_actors
        self.actors = actors
        self.starts = starts if starts is not None else ActorStarts()  # None: every actor counts as placed
        self.console = progress if progress is not None else Progress(
            "tokenize", unit="sample", done_word="encoded", every=cfg.progress_every, enabled=cfg.progress)
        self.first_info = first_info
        # {modality: encode policy} of actor 0, which every actor must report too (None: not reported)
        self.policy: dict[str, dict] | None = first_info.get("encode_policy")
        self.command_started = command_started
        self.pending: collections.deque[ChunkRef] = collections.deque()
        self.shard_iter: Iterator = iter(todo)
        self.next_shard = next(self.shard_iter, None)  # looked ahead: the tail starts as the last one is cut
        self.exhausted = self.next_shard is None  # every shard of the plan cut into chunks
        self.open: dict[str, _OpenShard] = {}
        self.prefetched: dict[ChunkRef, list] = {}  # reads started before their chunk went to an actor
        self.reading: dict[ChunkRef, list] = {}  # reads of the chunks sent to actors
        self.read_timers: dict[ChunkRef, list] = {}  # each read task's own run time (its second return)
        self.to_write: collections.deque[str] = collections.deque()
        self.writing: dict[Any, str] = {}  # writer task ref -> shard key
        self.max_writers = max(2, len(actors))
        self.failures: collections.Counter = collections.Counter()  # by shard, for job.json
        self.unit_failures: collections.Counter = collections.Counter()  # by (shard, chunk or writer)
        self.chunk_retries = 0
        self.writer_retries = 0
        self.shards: list[ShardResult] = []
        self.chunk_stats: list[ChunkStats] = []
        self.startup: float | None = None
        self.chunk_read_seconds: list[float] = []
        self.actors_by_pid: dict[int, dict] = {}
        self.last_chunk_at: float | None = None
        import ray

        self.reader = ray.remote(num_returns=2)(timed_read_rows)
        self.writer = ray.remote(write_shard_task)
        self.space_json = space.canonical_json()
        # Passes of more than one item: chunks are cut from the rows in length-bucket order (chunks.bucket_order).
        self.bucketed = bucketed_chunks(first_info.get("encode_policy") or {})

    # ---- the plan, cut into chunks lazily (the driver holds O(shards) state, never every chunk's rows) ----
    def _refill(self) -> None:
        window = len(self.actors) * QUEUE_PER_ACTOR
        while len(self.pending) < window and self.next_shard is not None:
            split, shard = self.next_shard
            self.next_shard = next(self.shard_iter, None)
            chunks = shard_chunks(split, shard, self.row_of, batch_seconds=self.cfg.chunk_seconds,
                                  max_images=self.cfg.chunk_images, bucketed=self.bucketed)
            opened = _OpenShard(split=split, shard=shard, chunks=chunks,
                                modalities=frozenset(self.row_of(x).modality for x in shard.ids))
            self.open[opened.key] = opened
            self.pending.extend(chunks)
        self.exhausted = self.next_shard is None

    def _rows(self, chunk: ChunkRef) -> list[ManifestRow]:
        """The chunk's rows as the driver holds them: ManifestRows pickle as they are (no dict copy each way)."""
        shard = self.open[chunk.shard_key].shard
        return [self.row_of(x) for x in chunk.row_ids(shard.ids)]

    def _read(self, chunk: ChunkRef, node: str | None) -> list:
        """The read task refs of this chunk's rows; none when the actors read their own chunks."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.inline_reads:
            return []
        # Decoded audio is ~10x its file: read where the consuming actor runs (soft: any node will do).
        opts: dict[str, Any] = {"num_cpus": self.cfg.read_cpus, "max_retries": 3}
        if node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        media, seconds = self.reader.options(**opts).remote(self._rows(chunk), **self.read_args)
        self.read_timers[chunk] = [seconds]
        return [media]

    def _read_seconds(self, chunk: ChunkRef, stats: ChunkStats) -> float:
        """Seconds spent reading an encoded chunk's media: the actor's own read, or its read tasks' run time."""
        import ray

        timers = self.read_timers.pop(chunk, [])
        if self.inline_reads or not timers:
            return stats.wait
        try:
            return float(sum(ray.get(timers, timeout=10)))  # done already: the actor had their media
        except Exception:  # noqa: BLE001 - a figure of job.json only; the wait is the best there is
            return stats.wait

    # ---- the run --------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        try:
            return self._run()
        finally:
            self._cancel()

    def _run(self) -> RunResult:
        import ray

        ray.remote(prepare_writer).options(num_cpus=0).remote()  # fire and forget: only its worker matters
        self._refill()
        if not self.inline_reads:  # the first chunks' reads start now, while the other actors still load codecs
            for chunk in list(self.pending)[: len(self.actors) * QUEUE_PER_ACTOR]:
                self.prefetched[chunk] = self._read(chunk, None)
        self.nodes: list[str | None] = [self.first_info["node"]] + [None] * (len(self.actors) - 1)
        processing_started = time.time()
        self.actor_info = [{**self.first_info, "ready_at": processing_started}]
        self.actors_by_pid[self.first_info["pid"]] = self.actor_info[0]
        self.pool = _ActorPool(self.actors, starting=range(1, len(self.actors)))
        self.progress = TokenizeProgress(self.todo, self.console, window=self.cfg.progress_every,
                                          reads_in_actors=self.inline_reads, read_cpus=self.cfg.read_cpus)
        self.waiting = Waiting(self.request, self.starts)
        try:
            while not self.exhausted or self.pending or self.open or self.writing:
                self._refill()
                self._dispatch()
                self.pool.ping_recovering()
                refs = self.pool.refs() + list(self.writing)
                if not refs:
                    time.sleep(0.2)
                    continue
                # Wake at the first result (waiting for all of them, up to the timeout, left a free actor
                # idle for up to a second per chunk at the job's tail), then take every one ready by then.
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                if ready:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                if ready:
                    self.waiting.progressed()
                else:
                    reads_done, reads_left = _read_counts(self.reading)
                    self.waiting.reads_finished(reads_done)
                    self.waiting.check(starting=self.pool.starting, reads_pending=reads_left > 0,
                                       show=self.console.note)
                for ref in ready:
                    if ref in self.writing:
                        self._on_written(self._writer_done(ref))
                    else:
                        event = self.pool.finish(ref)
                        if isinstance(event, PingDone):
                            self._on_ping(event)
                        else:
                            self._on_chunk(event)
                if self.pool.all_dead():
                    raise JobError("every codec actor died and could not be restarted; see the Ray logs "
                                   "(`ray logs`) for the cause, then rerun the same command")
                self.console.tick()
        finally:
            self.console.close()
        return RunResult(shards=self.shards, chunks=self.chunk_stats, failures_by_shard=dict(self.failures),
                         chunk_retries=self.chunk_retries, writer_retries=self.writer_retries,
                         actor_info=self.actor_info, actors_started=len(self.actors),
                         processing_seconds=time.time() - processing_started, startup_seconds=self.startup,
                         reads_in_actors=self.inline_reads, actors_by_pid=self.actors_by_pid,
                         last_chunk_at=self.last_chunk_at, chunk_read_seconds=self.chunk_read_seconds,
                         encode_policy=self.policy)

    def _in_tail(self) -> bool:
        return self.exhausted

    def _dispatch(self) -> None:
        tail = self._in_tail()
        if tail:  # longest first (any order writes the same bytes: the writer puts chunks in plan order)
            self.pending = collections.deque(sorted(self.pending, key=lambda c: -c.cost))
        for i in self.pool.free_slots(1 if tail else QUEUE_PER_ACTOR):
            if not self.pending:
                break
            chunk = self.pending.popleft()
            rows = self._rows(chunk)
            # The chunk's read starts now (if not already), while actor i still encodes its previous chunk.
            media = self.prefetched.pop(chunk, None) or self._read(chunk, self.nodes[i])
            self.reading[chunk] = media
            stats_ref, encoded_ref = self.actors[i].encode_chunk.options(num_returns=2).remote(
                split=chunk.split, shard=chunk.shard, index=chunk.index, rows=rows, media=media,
                read_args=self.read_args if self.inline_reads else None, token_space_id=self.space.id)
            if self.startup is None:
                self.startup = time.time() - self.command_started
                log.info("start-up: first chunk sent to a codec actor %.1f s after the command started "
                         "(driver peak RSS %.0f MB)", self.startup, peak_rss_mb())
            self.pool.assign(stats_ref, i, chunk, encoded_ref)
        if tail and not self.inline_reads:  # the next chunks' media is read ahead, whichever actor takes them
            for chunk in list(self.pending)[: len(self.actors)]:
                if chunk not in self.prefetched:
                    self.prefetched[chunk] = self._read(chunk, None)
        self._write_ready()

    def _on_ping(self, ping: PingDone) -> None:
        """An actor answered: it joins (checked against actor 0's token space and policy), or, still
        starting, it failed to start (its codecs differ from the first actor's, say): refused, not dropped."""
        i, info = ping.actor, ping.info
        if ping.error is None:
            if info["token_space_id"] != self.space.id:
                raise JobError(f"codec actor {i} gives token space {info['token_space_id'][:12]}, not the "
                               f"job's {self.space.short_id}: the codec weights or libraries differ between nodes")
            # Its tokens go into shards whose headers record actor 0's policy: other numerics are refused.
            check_actor_policy(i, info, self.policy)
            self.nodes[i] = info["node"]  # a restarted actor may live on another node now
            joined = {**info, "ready_at": time.time()}
            self.actors_by_pid.setdefault(info["pid"], joined)  # a restarted actor is a new process
            if i in self.pool.starting:
                self.pool.starting.discard(i)
                self.actor_info.append(joined)
        elif i in self.pool.starting and ping.loss is not ActorLoss.UNAVAILABLE:
            raise JobError(f"codec actor {i} failed to start: {actor_start_error(ping.error)}")

    def _on_chunk(self, done: ChunkDone) -> None:
        chunk = done.chunk
        self.reading.pop(chunk, None)
        if done.error is None:
            self.chunk_stats.append(done.stats)
            self.chunk_read_seconds.append(self._read_seconds(chunk, done.stats))
            self.last_chunk_at = time.time()
            shard = self.open[chunk.shard_key]
            shard.encoded[chunk.index] = done.encoded
            self.progress.encoded(chunk, done.stats)
            if shard.complete:
                self.to_write.append(shard.key)
                self._write_ready()
            return
        # Only this chunk is redone, first in line (its shard is the oldest open one), on any actor.
        self.read_timers.pop(chunk, None)
        self.pending.appendleft(chunk)
        self.chunk_retries += 1
        loss = done.loss
        if loss is not None and not loss.blames_the_work:
            return  # the actor was restarting or its node drained: not this chunk's fault
        self._failed(chunk.shard_key, f"chunk {chunk.index + 1}/{chunk.count}", done.error)

    def _failed(self, key: str, what: str, outcome: BaseException) -> None:
        # Counted per unit of work (a chunk, or the shard's writer): one actor killed with two chunks of a
        # shard queued is one mishap for each, not two strikes against the shard.
        self.failures[key] += 1
        self.unit_failures[(key, what)] += 1
        n = self.unit_failures[(key, what)]
        log.warning("shard %s (%s) failed (%d/%d): %s", key, what, n, self.cfg.max_shard_failures, short_error(outcome))
        if n >= self.cfg.max_shard_failures:
            raise JobError(
                f"shard {key} failed {n} times ({what}); last error: {short_error(outcome)}. "
                f"Its rows are listed in {path_of(self.cfg.out, PLAN_NAME)}; fix the cause and rerun the same "
                "command: completed shards are kept")

    # ---- writers ----------------------------------------------------------------------------------------------
    def _write_ready(self) -> None:
        while self.to_write and len(self.writing) < self.max_writers:
            shard = self.open[self.to_write.popleft()]
            # A light task: no CPU reserved, so it never waits behind the reads or the actors' CPUs.
            ref = self.writer.options(num_cpus=0, max_retries=3).remote(
                self.cfg.out, shard.split, shard.shard.name, list(shard.shard.ids), self.space_json,
                {"plan_sha256": self.plan.sha256}, *[shard.encoded[k] for k in range(len(shard.chunks))],
                encode_policy=shard_policy(self.policy, shard.modalities))
            self.writing[ref] = shard.key

    def _writer_done(self, ref) -> WriterDone:
        import ray
        from ray.exceptions import RayError

        key = self.writing.pop(ref)
        try:
            return WriterDone(shard_key=key, result=ray.get(ref))
        except RayError as exc:
            return WriterDone(shard_key=key, error=exc)

    def _on_written(self, done: WriterDone) -> None:
        from ray.exceptions import ObjectLostError

        key = done.shard_key
        if done.error is not None:
            shard = self.open[key]
            self.writer_retries += 1
            self._failed(key, "writing", done.error)
            if isinstance(done.error, ObjectLostError):  # an encoded chunk is gone (its node died): encode again
                shard.encoded.clear()
                self.progress.lost(shard.chunks)
                self.pending.extendleft(reversed(shard.chunks))
            else:
                self.to_write.appendleft(key)
            self._write_ready()
            return
        del self.open[key]  # its encoded chunks are released from the object store with their refs
        self.shards.append(done.result)
        self.progress.committed(done.result)
        self._write_ready()

    def _cancel(self) -> None:
        """Stopped early (Ctrl-C, SIGTERM, a failed shard): nothing keeps reading or writing on a cluster. A
        writer cut short leaves only temp files, which the next run removes."""
        import ray

        reads = [r for media in [*self.prefetched.values(), *self.reading.values()] for r in media]
        # Reads are cancelled with force (their worker process is killed): a KeyboardInterrupt landing in a
        # read task's first `import torch` left that pooled worker with half of torch imported, and every
        # later read it ran (the rerun, in the same Ray session) failed. On a private local instance there
        # is no later job in that session (it is shut down next), and a cancel racing a task's completion
        # can abort the driver inside Ray (`Check failed: it != submissible_tasks_.end()`, ray#54527), so
        # reads are cancelled only on a shared instance, and only those not finished. A writer is
        # interrupted gently so it removes its temp files.
        reads = [] if self.owns_ray else _unfinished(reads)
        for ref, force in [(r, True) for r in reads] + [(r, False) for r in _unfinished(list(self.writing))]:
            try:
                ray.cancel(ref, force=force)
            except Exception:  # noqa: BLE001 - finished or already gone is fine
                pass


def _unfinished(refs: list) -> list:
    """The refs whose tasks have not finished (cancelling a finished one only risks Ray's cancel race)."""
    import ray

    if not refs:
        return []
    try:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    except Exception:  # noqa: BLE001 - Ray going away: nothing left to cancel
        return []
    return pending


def _read_counts(reading: dict) -> tuple[int, int]:
    """(finished, unfinished) read tasks of the chunks sent to actors."""
    import ray

    refs = [ref for media in reading.values() for ref in media]
    if not refs:
        return 0, 0
    ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=0)
    return len(ready), len(not_ready)


def timed_read_rows(rows: list[ManifestRow], **read_args) -> tuple[list, float]:
    """ray_jobs.read.read_rows and the seconds it ran: a read task's two returns (the media go to the actor,
    the seconds to the driver, for job.json's feed rate)."""
    from ray_jobs.read import read_rows

    t0 = time.perf_counter()
    media = read_rows(rows, **read_args)
    return media, time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class _Sent:
    """A call in flight to a codec actor: a chunk to encode, or a ping."""

    actor: int
    ping: bool = False
    chunk: ChunkRef | None = None
    encoded: Any = None  # the ref of the chunk's EncodedChunk


class _ActorPool:
    """Tracks which actor runs what. An actor whose call failed is 'recovering' (Ray restarts it) and
    gets no new work until a ping succeeds; pings back off so a restarting actor is not hammered."""

    def __init__(self, actors: list, *, starting=()):
        self.actors = actors
        self.inflight: dict[Any, _Sent] = {}
        self.load = [0] * len(actors)
        # Actors still loading their codecs are pinged like recovering ones: the answer comes once loaded.
        self.starting: set[int] = set(starting)
        self.recovering: dict[int, float] = {i: 0.0 for i in self.starting}  # actor -> time of the next ping
        self.pinging: set[int] = set()
        self.dead: set[int] = set()

    def free_slots(self, per_actor: int) -> list[int]:
        ready = [i for i in range(len(self.actors)) if i not in self.recovering and i not in self.dead]
        slots = []
        for i in sorted(ready, key=lambda k: self.load[k]):
            slots += [i] * max(0, per_actor - self.load[i])
        return slots

    def assign(self, ref, i: int, chunk: ChunkRef, encoded_ref) -> None:
        self.inflight[ref] = _Sent(actor=i, chunk=chunk, encoded=encoded_ref)
        self.load[i] += 1

    def ping_recovering(self) -> None:
        now = time.time()
        for i, when in list(self.recovering.items()):
            if i not in self.pinging and now >= when:
                self.inflight[self.actors[i].info.remote()] = _Sent(actor=i, ping=True)
                self.pinging.add(i)

    def all_dead(self) -> bool:
        return len(self.dead) == len(self.actors)

    def refs(self) -> list:
        return list(self.inflight)

    def finish(self, ref) -> ChunkDone | PingDone:
        """The event of a ready ref. An actor lost on a call gets no work until a ping answers (backing off
        so a restarting actor is not hammered); one that a ping finds dead stays out for good."""
        import ray
        from ray.exceptions import RayError

        sent = self.inflight.pop(ref)
        i = sent.actor
        try:
            outcome, error = ray.get(ref), None
        except RayError as exc:
            outcome, error = None, exc
        if not sent.ping:
            self.load[i] -= 1
            event: ChunkDone | PingDone = ChunkDone(actor=i, chunk=sent.chunk, encoded=sent.encoded,
                                                    stats=outcome, error=error)
        else:
            self.pinging.discard(i)
            event = PingDone(actor=i, info=outcome, error=error)
        loss = event.loss
        if loss is not None and loss.dead and isinstance(event, PingDone):
            self.dead.add(i)
            self.recovering.pop(i, None)
        elif loss is not None:
            backoff = 0.5 if i not in self.recovering else 1.0
            self.recovering[i] = time.time() + backoff
        elif isinstance(event, PingDone):
            self.recovering.pop(i, None)
        return event
