"""How busy the codec actors were and whether the reads kept up: job.json's actors.per_actor and feed,
and the progress line's "actors idle N% waiting for reads".

Every figure comes from the chunks' stats (ray_jobs.chunks.ChunkStats: the actor's time waiting for a
chunk's media and its forward passes, from each codec's uti.codecs.batching.PassLog) and the driver's
clock (when an actor was ready, when the job's last chunk came back). Definitions, as docs/FORMAT.md
("job.json") gives them:

* an actor's wall time: from the driver seeing it ready (its codecs loaded) to the job's last chunk;
* busy_fraction: its seconds in forward passes over its wall time;
* idle_waiting_for_reads: its seconds waiting for its chunks' media (read tasks not done yet, or its own
  read with --read-in actors) over its wall time;
* feed.read_rate: media units (audio seconds or images) per second spent reading them (an actor's own
  read, or a read task's run time), times the actors: the scheduler reads one chunk ahead per actor, so
  that is the rate the read side can deliver at;
* feed.encode_rate: media units per second in forward passes, times the actors: the rate the actors
  encode at when never kept waiting;
* feed.delivered_rate: media units over the processing time: what went through;
* feed.actors_idle_fraction: the actors' seconds waiting for reads over their wall time, all actors.

read_rate above encode_rate says the reads can keep the actors busy; actors_idle_fraction says how far
they did.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable

IDLE_WARN = 0.10  # the progress line and the job's end say so when actors wait for reads more than this
MIN_WINDOW = 5.0  # seconds the progress line's idle share covers at least (one chunk's share says little)
IDLE_MIN_SECONDS = 20.0  # the end-of-run idle line needs a run at least this long (see ray_jobs.job)
UNITS = {"audio": "audio_seconds", "image": "images"}


def idle_message(share: float, *, reads_in_actors: bool, read_cpus: float) -> str | None:
    """"actors idle 35% waiting for reads: ..." with the flags that help, or None at IDLE_WARN or below."""
    if not share > IDLE_WARN:
        return None
    if reads_in_actors:  # each actor reads its own chunk before encoding it
        return (f"actors idle {share:.0%} waiting for reads (each actor reads its own chunks): use --read-in tasks "
                "so read tasks read ahead, and leave them CPUs (add CPUs or lower --num-actors)")
    return (f"actors idle {share:.0%} waiting for reads: add CPUs, or lower --read-cpus (now {read_cpus:g}) so "
            "more read tasks run at once")


class IdleWindow:
    """The actors' share of time waiting for reads over the chunks that finished in the last `seconds`
    (the progress interval, at least MIN_WINDOW): waiting over waiting plus encoding, summed."""

    def __init__(self, *, seconds: float, reads_in_actors: bool, read_cpus: float,
                 clock: Callable[[], float] = time.monotonic):
        self.seconds = max(seconds, MIN_WINDOW)
        self.reads_in_actors = reads_in_actors
        self.read_cpus = read_cpus
        self.clock = clock
        self.events: collections.deque[tuple[float, float, float]] = collections.deque()  # (when, wait, wait + busy)

    def add(self, stats: Any) -> None:
        self.events.append((self.clock(), stats.wait, stats.wait + stats.busy))

    def share(self) -> float | None:
        cutoff = self.clock() - self.seconds
        while self.events and self.events[0][0] < cutoff:
            self.events.popleft()
        total = sum(t for _, _, t in self.events)
        return sum(w for _, w, _ in self.events) / total if total > 0 else None

    def message(self) -> str | None:
        share = self.share()
        return None if share is None else idle_message(share, reads_in_actors=self.reads_in_actors,
                                                        read_cpus=self.read_cpus)


@dataclass
class ActorFigures:
    """One actor process's share of the work (a restarted actor is a new process: its own entry)."""

    pid: int
    node: str | None
    device: str | None
    wall_seconds: float
    chunks: int = 0
    forward_seconds: float = 0.0
    wait_seconds: float = 0.0
    passes: int = 0
    items: int = 0
    dummies: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)  # real items per pass -> passes
    estimated: bool = False  # some passes counted from the codec contract (an adapter without a pass log)

    def to_dict(self) -> dict[str, Any]:
        wall = self.wall_seconds
        return {
            "pid": self.pid, "node": self.node, "device": self.device, "chunks": self.chunks,
            "wall_seconds": wall, "forward_seconds": self.forward_seconds,
            # The actor's clock times its passes, the driver's its wall: a few ms apart, never over 1.
            "busy_fraction": min(1.0, self.forward_seconds / wall) if wall > 0 else 0.0,
            "passes": self.passes,
            "items_per_pass": {"mean": self.items / self.passes if self.passes else 0.0,
                               "histogram": {str(k): v for k, v in sorted(self.sizes.items())}},
            "dummy_items": self.dummies,
            "passes_estimated": self.estimated,
            "idle_waiting_for_reads": min(1.0, self.wait_seconds / wall) if wall > 0 else 0.0,
        }


def actor_figures(run: Any) -> list[ActorFigures]:
    """Per actor process (by pid, in the order they became ready) from a RunResult."""
    last = run.last_chunk_at
    by_pid: dict[int, ActorFigures] = {}
    for pid, info in sorted(run.actors_by_pid.items(), key=lambda kv: kv[1].get("ready_at", 0.0)):
        wall = max(0.0, last - info["ready_at"]) if last is not None and "ready_at" in info else 0.0
        by_pid[pid] = ActorFigures(pid=pid, node=info.get("node"), device=info.get("device"), wall_seconds=wall)
    for c in run.chunks:
        a = by_pid.get(c.pid)
        if a is None:  # its ready answer was never seen (restarted between two pings): its chunks' span
            a = by_pid[c.pid] = ActorFigures(pid=c.pid, node=None, device=None, wall_seconds=0.0)
        a.chunks += 1
        a.wait_seconds += c.wait
        for p in c.passes.values():
            a.forward_seconds += p.seconds
            a.passes += p.passes
            a.items += p.items
            a.dummies += p.dummies
            a.sizes.update(p.sizes)
            a.estimated = a.estimated or not p.logged
    for a in by_pid.values():
        if a.wall_seconds <= 0 and a.chunks:
            spans = [(c.started_at, c.finished_at) for c in run.chunks if c.pid == a.pid]
            a.wall_seconds = max(e for _, e in spans) - min(s for s, _ in spans)
    return list(by_pid.values())


def feed_figures(run: Any, actors: list[ActorFigures], *, n_actors: int) -> dict[str, Any]:
    """job.json's "feed": the read side's rate against the encode rate, in the units of the modality whose
    forward passes took longest (None: nothing encoded). A chunk's read time covers all its rows, so in
    a chunk of audio and images the images' reads count against the audio read rate too."""
    forward: dict[str, float] = collections.Counter()
    for c in run.chunks:
        for m, p in c.passes.items():
            forward[m] += p.seconds
    wall = sum(a.wall_seconds for a in actors)
    idle = min(1.0, sum(a.wait_seconds for a in actors) / wall) if wall > 0 else 0.0
    if not forward:
        return {"unit": None, "read_rate": 0.0, "encode_rate": 0.0, "delivered_rate": 0.0, "actors_idle_fraction": idle}
    modality = max(forward, key=lambda m: (forward[m], m))
    units_of = (lambda c: c.audio_seconds) if modality == "audio" else (lambda c: float(c.images))
    held = [(c, r) for c, r in zip(run.chunks, run.chunk_read_seconds) if modality in c.passes]
    units = sum(units_of(c) for c, _ in held)
    read_seconds = sum(r for _, r in held)
    processing = run.processing_seconds
    return {
        "unit": UNITS[modality],
        "read_rate": units / read_seconds * n_actors if read_seconds > 0 else None,  # None: no read time measured
        "encode_rate": units / forward[modality] * n_actors if forward[modality] > 0 else 0.0,
        "delivered_rate": units / processing if processing > 0 else 0.0,
        "actors_idle_fraction": idle,
        "read_seconds": read_seconds, "forward_seconds": forward[modality], "units": units,
    }


def actors_summary(run: Any, *, processing: float) -> dict[str, Any]:
    """The keys job.json's "actors" gains: forward_busy_fraction, per_actor, feed."""
    actors = actor_figures(run)
    n = max(1, len(run.actor_info))
    forward = sum(a.forward_seconds for a in actors)
    return {
        # seconds in forward passes over (ready actors x processing_seconds); busy_fraction counts all of an
        # actor's work on a chunk once its media arrived (building the samples too)
        "forward_busy_fraction": min(1.0, forward / (n * processing)) if processing > 0 else 0.0,
        "per_actor": [a.to_dict() for a in actors],
        "feed": feed_figures(run, actors, n_actors=n),
    }
