"""What the tokenize driver tells the operator about the run: the progress line, why nothing has progressed
(actors loading their codecs, or resources Ray cannot place), a failure in one line, and the driver's own
peak memory. None of it changes what is written; each piece reads the scheduler's state and reports it.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from typing import TYPE_CHECKING, Iterable

from ray_jobs import resources
from ray_jobs.chunks import ChunkRef, ChunkStats, ShardResult
from ray_jobs.feed import IdleWindow
from ray_jobs.resources import Request, waiting_reason
from uti.doctor import doctor_hint
from uti.progress import Progress

if TYPE_CHECKING:
    from ray_jobs.actors import ActorStarts

# The scheduler's logger: an operator filtering the job's log by "ray_jobs.scheduler" sees these warnings too.
log = logging.getLogger("ray_jobs.scheduler")


def peak_rss_mb() -> float:
    """This process's peak resident set, in MB.

    VmHWM, not `getrusage().ru_maxrss`: Linux keeps ru_maxrss across execve, so a driver started by a
    large parent (a benchmark that had torch loaded, a notebook) reported the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource  # not Linux: no /proc; ru_maxrss is the best there is (bytes on macOS, KiB elsewhere)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def actor_start_error(exc: BaseException) -> str:
    """Why a codec actor could not start, in one line: a refusal of ours (e.g. uti.codecs.batching's
    BatchDependenceError: codec, device, the flag to change) as its message alone, anything else as the
    last error line of Ray's report, with `uti doctor` for installation failures."""
    from uti.errors import UTIError

    cause = getattr(exc, "cause", None)  # a RayTaskError carries the exception the actor raised
    if isinstance(cause, UTIError):
        return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"{short_error(exc)}{doctor_hint(exc)}"


def short_error(exc: BaseException) -> str:
    """An exception in one line of at most 300 characters: Ray's reports are whole tracebacks, whose last
    line naming an error is the cause."""
    text = str(exc).strip().splitlines()
    cause = [line for line in text if "Error" in line or "error" in line]
    return (cause[-1] if cause else (text[-1] if text else type(exc).__name__))[:300]


def loading_status(n: int, seconds: float) -> str:
    return f"{n} codec actor{'s' if n != 1 else ''} loading ({seconds:.0f} s)"


class Waiting:
    """Shows why nothing has progressed (no chunk encoded, no read task finished, an actor still not up):
    actors placed and loading their codecs say so (when `loading_shown`: the job waits for them); actors
    Ray has not placed and read tasks not started get their resource shortage after PENDING_GRACE_SECONDS,
    on the progress line and once in the log (progress bars are off in CI logs). Resources are read only
    once the grace period is over."""

    def __init__(self, request: Request, starts: "ActorStarts", *, grace: float | None = None):
        self.request = request
        self.starts = starts
        self.grace = resources.PENDING_GRACE_SECONDS if grace is None else grace
        self.since = time.time()
        self.last_reason: str | None = None
        self.loading_logged = False
        self.shown = ""
        self._reads_seen = 0

    def progressed(self) -> None:
        self.since = time.time()

    def reads_finished(self, count: int) -> None:
        """A read task finishing is progress too."""
        if count != self._reads_seen:
            self._reads_seen = count
            self.progressed()

    def check(self, *, starting: Iterable[int], reads_pending: bool, show, loading_shown: bool = False) -> None:
        import ray

        loading, pending = self.starts.split(starting)
        late = time.time() - self.since >= self.grace
        reason = None
        if late and (pending or reads_pending):
            reason = waiting_reason(actors_pending=len(pending), reads_pending=reads_pending, request=self.request,
                                    available=ray.available_resources(), total=ray.cluster_resources())
            if reason and reason != self.last_reason:
                log.warning("%s", reason)
            self.last_reason = reason
        status = ""
        if loading and loading_shown:
            status = loading_status(len(loading), self.starts.loading_for(loading))
            if pending and not reason:  # placed in a moment, or named with its shortage after the grace period
                status += f", {len(pending)} not placed yet"
            if late and not self.loading_logged:
                log.info("%s", status)
                self.loading_logged = True
        text = "; ".join(x for x in (reason, status) if x)
        if show is not None and (text or self.shown):  # clears only what it showed
            show(text)
        self.shown = text


class TokenizeProgress:
    """The tokenize figures on the console (uti.progress): samples as their chunks finish encoding, shards
    as they commit, and the actors' idle share while it is above ray_jobs.feed.IDLE_WARN."""

    def __init__(self, todo, console: Progress, *, window: float = 15.0, reads_in_actors: bool = False,
                 read_cpus: float = 0.5):
        self.console = console
        self.idle = IdleWindow(seconds=window, reads_in_actors=reads_in_actors, read_cpus=read_cpus,
                               clock=console.clock)
        self.shards_total = len(todo)
        self.shards = 0
        self.open: dict[str, dict[int, ChunkStats]] = collections.defaultdict(dict)  # uncommitted shard -> chunks
        self.samples = self.images = self.tokens = 0
        self.audio = 0.0
        console.start(sum(shard.num_samples for _, shard in todo))
        self._show()
        console.note("the first chunks to encode")

    def _add(self, c: ChunkStats, sign: int) -> None:
        self.samples += sign * (c.num_samples + c.num_errors)
        self.audio += sign * c.audio_seconds
        self.images += sign * c.images
        self.tokens += sign * c.tokens

    def encoded(self, chunk: ChunkRef, stats: ChunkStats) -> None:
        self.open[chunk.shard_key][chunk.index] = stats
        self.idle.add(stats)
        self._add(stats, 1)
        self._show()

    def lost(self, chunks: list[ChunkRef]) -> None:
        """Encoded chunks lost before their shard was written: encoded again, counted again then."""
        for chunk in chunks:
            stats = self.open[chunk.shard_key].pop(chunk.index, None)
            if stats is not None:
                self._add(stats, -1)
        self._show()

    def committed(self, result: ShardResult) -> None:
        self.open.pop(f"{result.split}/{result.shard}", None)
        self.shards += 1
        self._show()

    def _show(self) -> None:
        elapsed = max(self.console.clock() - self.console.t0, 1e-9)
        fields = [f"{self.audio / 3600:.2f} h audio"] if self.audio else []
        if self.images:
            fields.append(f"{self.images:,} images")
        fields.append(f"{self.tokens / elapsed:,.0f} tokens/s")
        idle = self.idle.message()
        if idle:
            fields.append(idle)
        fields.append(f"shards {self.shards}/{self.shards_total} committed")
        self.console.update(self.samples, fields)
        left = self.shards_total - self.shards
        if self.console.total and self.samples >= self.console.total and left:  # all encoded: the writers' turn
            self.console.note(f"{left} shard{'s' if left != 1 else ''} being written")
