"""What comes back to the tokenize scheduler: a chunk encoded (or not), an actor's ping answered (or not), a
shard written (or not), and how an actor was lost, told by the exception's type and attributes.

Ray 2.x raises ActorUnavailableError while an actor restarts (its in-flight calls fail with "The actor was
restarted") or cannot be reached for now, and ActorDiedError once Ray will not bring it back: killed,
out of restarts, or its constructor raised (`actor_init_failed`). `preempted` is set when the actor's node
was drained by the autoscaler: the work it held is not at fault.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from ray_jobs.chunks import ChunkRef, ChunkStats, ShardResult


class ActorLoss(enum.Enum):
    """Why a call to a codec actor failed because of the actor, not of the work it was given."""

    UNAVAILABLE = "unavailable"  # restarting, or unreachable for now: Ray may bring it back
    PREEMPTED = "preempted"  # its node was drained (autoscaler): dead, through no fault of its work
    DIED = "died"  # dead: killed, crashed with no restart left, or its constructor raised

    @property
    def dead(self) -> bool:
        """Ray will not answer this actor's calls again (a ping that gets this marks it dead)."""
        return self is not ActorLoss.UNAVAILABLE

    @property
    def blames_the_work(self) -> bool:
        """The failed call counts against its shard (--max-shard-failures): the actor may have died of it."""
        return self is ActorLoss.DIED


def actor_loss(error: BaseException | None) -> ActorLoss | None:
    """How the actor was lost; None when the error is not an actor's loss (the call itself raised)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    if isinstance(error, ActorUnavailableError):
        return ActorLoss.UNAVAILABLE
    if isinstance(error, RayActorError):  # ActorDiedError, or its base class where Ray raises that
        return ActorLoss.PREEMPTED if error.preempted else ActorLoss.DIED
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActorCallDone:
    """A call to a codec actor came back: `error` is None when it succeeded."""

    actor: int
    error: BaseException | None = None

    @property
    def loss(self) -> ActorLoss | None:
        return actor_loss(self.error)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChunkDone(ActorCallDone):
    """A chunk's encode call came back: its stats, or the error that stopped it."""

    chunk: ChunkRef
    encoded: Any  # the ref of its EncodedChunk, read by the shard's writer task
    stats: ChunkStats | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PingDone(ActorCallDone):
    """An actor's `info` call came back: its info (it is up, its codecs loaded), or why not."""

    info: dict | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriterDone:
    """A shard's writer task came back: the committed shard, or why it was not written."""

    shard_key: str  # split/shard
    result: ShardResult | None = None
    error: BaseException | None = None
