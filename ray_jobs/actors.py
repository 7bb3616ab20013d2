"""The driver's side of the codec actors: starting the pool, waiting for actor 0's codecs (whose token space
and formats are the job's), knowing which actors Ray has placed, and killing them all when the job ends.
What runs inside an actor is ray_jobs.actor.CodecWorker; which actor encodes what is ray_jobs.scheduler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Any, Iterable

from ray_jobs.config import TokenizeConfig
from ray_jobs.diagnostics import Waiting, actor_start_error
from ray_jobs.outputs import JobError
from ray_jobs.resources import Request, prepare_on, resolve
from uti.config import UTIConfig
from uti.progress import Progress

log = logging.getLogger("ray_jobs.job")  # the job's log: an operator reads the actors' start-up there


def actor_name(out: str, index: int) -> str:
    """Named per output folder so operators (and fault-injection tests) can find a run's actors."""
    return f"uti-tokenize-{hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:10]}-{index}"


@dataclasses.dataclass(kw_only=True, frozen=True)
class CodecFacts:
    """What the driver needs to know of the codecs: the token space and the read tasks' target formats."""

    space: Any  # uti.token_space.TokenSpace
    sample_rate: int
    channels: int
    proc_size: int
    encode_policy: dict[str, dict] = dataclasses.field(default_factory=dict)  # {modality: EncodePolicy dict}

    @classmethod
    def from_dict(cls, data: dict) -> "CodecFacts":
        from uti.token_space import TokenSpace

        return cls(space=TokenSpace.from_json_bytes(data["token_space_json"], where="first codec actor's token space"),
                   sample_rate=data["sample_rate"], channels=data["channels"], proc_size=data["proc_size"],
                   encode_policy=data.get("encode_policy") or {})


class ActorStarts:
    """Which starting codec actors Ray has placed: an actor's `placed` call answers once its process runs,
    before its codecs load (ray_jobs.actor), so a placed actor is loading, not waiting for resources."""

    def __init__(self) -> None:
        self.refs: list = []  # by actor index: the ref of its `placed` call
        self.placed_at: dict[int, float] = {}

    def add(self, placed_ref) -> None:
        self.refs.append(placed_ref)

    def split(self, starting: Iterable[int]) -> tuple[list[int], list[int]]:
        """(loading, not placed) of these actor indices."""
        import ray

        loading, pending = [], []
        for i in sorted(starting):
            if i not in self.placed_at and i < len(self.refs) and ray.wait([self.refs[i]], timeout=0)[0]:
                self.placed_at[i] = time.time()  # an actor that failed to start answers too: its ping says why
            (loading if i in self.placed_at or i >= len(self.refs) else pending).append(i)
        return loading, pending

    def loading_for(self, loading: list[int]) -> float:
        """Seconds the longest-loading of these actors has been loading."""
        now = time.time()
        return max((now - self.placed_at.get(i, now) for i in loading), default=0.0)


@dataclasses.dataclass(kw_only=True)
class CodecActors:
    """The job's codec actors, all started at once before the work is cut into chunks (a late actor would
    join after a one-shard job is done). Each loads the codecs the rows need; actor 0's token space is the
    job's, and every other actor is checked against it when its first ping answers (ray_jobs.scheduler).
    Checked against the cluster's resources first."""

    actors: list
    request: Request
    modalities: tuple[str, ...]  # the media codecs they load
    starts: ActorStarts = dataclasses.field(default_factory=ActorStarts)  # which of them Ray has placed
    facts: CodecFacts | None = None  # actor 0's, once wait_ready returned
    _new: Any = None  # actor index -> a new actor of this request (for launch_rest)
    # Each actor's `load` call, kept: a load that failed (e.g. the batching self-check) and whose ref was
    # dropped unread made Ray print its traceback beside the job's one-line error (`kill` reads them).
    loads: list = dataclasses.field(default_factory=list)

    @classmethod
    def launch(cls, cfg: TokenizeConfig, ucfg: UTIConfig, *, chunks: int | None, modalities: tuple[str, ...],
               max_restarts: int, only_first: bool = False) -> "CodecActors":
        """Start the actors (`only_first`: actor 0 now, the others with `launch_rest`)."""
        import ray

        request = resolve(cfg, ray.cluster_resources(), chunks=chunks)
        reads = "the actors read their own chunks" if request.reads_in_actors else \
            f"read tasks of {request.read_cpus:g} CPU"
        log.info("%d codec actors (%g CPU, %g GPU each; codecs: %s), %s", request.num_actors,
                 request.cpus_per_actor, request.gpus_per_actor, ", ".join(modalities) or "text only", reads)
        launched = cls(actors=[], request=request, modalities=modalities)
        launched._new = lambda i: _new_actor(cfg, ucfg, request, i, space_json=None, modalities=modalities,
                                             max_restarts=max_restarts)
        try:
            launched._add(0)
            if not only_first:
                launched.launch_rest()
        except BaseException:
            launched.kill()
            raise
        return launched

    def launch_rest(self) -> None:
        while len(self.actors) < self.request.num_actors:
            self._add(len(self.actors))

    def _add(self, index: int) -> None:
        import ray

        actor = self._new(index)
        self.actors.append(actor)
        # `placed` first: it answers once Ray has placed the actor, before its codecs load (`load`, sent now so
        # every actor loads at once; each later call waits for it).
        self.starts.add(actor.placed.remote())
        self.loads.append(actor.load.remote())

    def wait_ready(self, progress: Progress | None = None) -> "CodecActors":
        """Wait for actor 0's codecs (saying what it waits for: the actors loading, or after a grace period
        the resources of those Ray has not placed): its token space and formats are the job's."""
        import ray
        from ray.exceptions import RayError

        try:
            ref = self.actors[0].codec_facts.remote()
            waiting = Waiting(self.request, self.starts)
            while not ray.wait([ref], timeout=1.0)[0]:
                waiting.check(starting=range(len(self.actors)), reads_pending=False,
                              show=progress.note if progress else None, loading_shown=True)
                if progress:
                    progress.tick()
            self.facts = CodecFacts.from_dict(ray.get(ref))
            return self
        except RayError as exc:
            self.kill()
            raise JobError(f"the first codec actor failed to start: {actor_start_error(exc)}") from None
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        import ray

        for ref in self.loads:  # read, so a failed load is handled (its error was reported once already)
            try:
                if ray.wait([ref], timeout=0)[0]:
                    ray.get(ref)
            except Exception:  # noqa: BLE001
                pass
        self.loads.clear()
        for actor in self.actors:
            _kill(actor)


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
    ).remote(config=ucfg, token_space_json=space_json, out=cfg.out, device=request.device,
             threads=max(1, int(request.cpus_per_actor)), modalities=modalities,
             prepare_on=prepare_on(cfg, request))
