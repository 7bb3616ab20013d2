"""What a tokenize run asks of the Ray cluster: defaults that fit it, a request that can never be
scheduled refused at once, and the reason when something waits for resources.

Who reads the media (`--read-in`): GPU actors are fed by CPU read tasks, so decoding overlaps the GPU's
work. CPU actors read their own chunks: on a CPU the read costs the same core time wherever it runs, and
each read task's worker process cost more than the reads themselves (start a worker, import torch for
resampling: ~3 s of CPU per worker, against ~0.5 s of reading in 600 s of audio), so every CPU goes to
an actor.

Read tasks and codec actors draw on the same CPUs. Ray gives an actor its CPUs for its whole life, so
actors holding every CPU leave none for the read tasks that feed them, and the run waits forever
without a word (e.g. `ray start --head --num-cpus 2` with two 1-CPU actors). Where there are
read tasks the defaults leave room for them, and an explicit request that cannot fit fails before
anything starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ray_jobs.config import PREPARE_DEVICE, PREPARE_READER, TokenizeConfig
from ray_jobs.outputs import JobError

PENDING_GRACE_SECONDS = 15.0  # an actor or read task waiting longer than this gets its reason shown


@dataclass(kw_only=True, frozen=True)
class Request:
    """The resources of one run: `num_actors` codec actors and, unless the actors read their own chunks,
    read tasks of `read_cpus` each."""

    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    read_cpus: float  # 0 when `reads_in_actors`
    reads_in_actors: bool = False

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"

    @property
    def actor_cpus(self) -> float:
        return self.num_actors * self.cpus_per_actor

    @property
    def actor_gpus(self) -> float:
        return self.num_actors * self.gpus_per_actor


def local_num_cpus(cfg: TokenizeConfig, cpu_count: int) -> int:
    """Logical CPUs of a local instance this run starts: every core, and enough for an explicit
    --num-actors plus its read tasks (so a local request always fits; the OS shares the cores). Without
    --num-actors nothing is added: CPU actors then take every core and read their own chunks (one actor
    per core, not one more), and GPU actors leave room for their read tasks by default_actors."""
    if cfg.num_actors is None:
        return cpu_count
    return max(cpu_count, math.ceil(cfg.num_actors * cfg.cpus_per_actor + cfg.read_cpus))


def reads_in_actors(cfg: TokenizeConfig, gpus_per_actor: float) -> bool:
    """`--read-in auto`: CPU actors read their own chunks, GPU actors are fed by read tasks."""
    if cfg.read_in == "auto":
        return gpus_per_actor == 0
    return cfg.read_in == "actors"


def prepare_on(cfg: TokenizeConfig, request: Request) -> str:
    """`--prepare-on auto`: on the device for GPU actors (the read tasks then only decode, and the GPU
    resamples and resizes in a fraction of the CPU's time), in the reader on CPU actors (the same work
    on the same cores either way, and the tokens of the shards made before: PIL's images)."""
    if cfg.prepare_on != "auto":
        return cfg.prepare_on
    return PREPARE_DEVICE if request.gpus_per_actor > 0 else PREPARE_READER


def default_actors(cpus: float, gpus: float, *, gpus_per_actor: float, cpus_per_actor: float,
                   read_cpus: float) -> int:
    """One actor per GPU (or per `gpus_per_actor` share) on GPU clusters, else as many as leave
    `read_cpus` free for reading (0 when the actors read their own chunks: every CPU); never more than
    the CPUs allow, never fewer than 1."""
    by_cpu = max(1, math.floor((cpus - read_cpus) / cpus_per_actor + 1e-9)) if cpus_per_actor > 0 else 1 << 30
    if gpus_per_actor > 0:
        return max(1, min(math.floor(gpus / gpus_per_actor + 1e-9), by_cpu))
    return by_cpu


def resolve(cfg: TokenizeConfig, cluster: Mapping[str, float], *, chunks: int | None) -> Request:
    """The request of this run on a cluster with `cluster` resources (ray.cluster_resources()), never more
    actors than the run has `chunks` (the unit of work: any actor encodes any chunk; None: not known yet,
    the actors start while a big manifest is still being read).

    Raises JobError naming the numbers and the flag to change when it can never be scheduled.
    """
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    gpus_per_actor = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if gpus > 0 else 0.0)
    if gpus_per_actor > 0 and gpus == 0:
        raise JobError(f"--gpus-per-actor {gpus_per_actor:g} but the Ray cluster reports no GPUs; add GPU nodes or "
                       "use --gpus-per-actor 0 to encode on CPU")
    inline = reads_in_actors(cfg, gpus_per_actor)
    read_cpus = 0.0 if inline else cfg.read_cpus
    if cfg.num_actors is None:
        n = default_actors(cpus, gpus, gpus_per_actor=gpus_per_actor, cpus_per_actor=cfg.cpus_per_actor,
                           read_cpus=read_cpus)
    else:
        n = cfg.num_actors
    request = Request(num_actors=max(1, min(n, chunks) if chunks is not None else n), cpus_per_actor=cfg.cpus_per_actor,
                      gpus_per_actor=gpus_per_actor, read_cpus=read_cpus, reads_in_actors=inline)
    check_fits(request, cpus=cpus, gpus=gpus)
    return request


def check_fits(r: Request, *, cpus: float, gpus: float) -> None:
    """Refuse a request the cluster can never run, naming the numbers and the flag to change."""
    fit_gpu = math.floor(gpus / r.gpus_per_actor + 1e-9) if r.gpus_per_actor > 0 else None
    if fit_gpu is not None and r.actor_gpus > gpus + 1e-9:
        raise JobError(
            f"{r.num_actors} codec actors x {r.gpus_per_actor:g} GPU (--num-actors, --gpus-per-actor) = "
            f"{r.actor_gpus:g} GPU, but the Ray cluster has {gpus:g} GPU: the job could never start. Use "
            f"--num-actors {max(1, fit_gpu)} or fewer (or leave --num-actors out: the default fits the cluster)")
    need = r.actor_cpus + r.read_cpus
    if need > cpus + 1e-9:
        fit = math.floor((cpus - r.read_cpus) / r.cpus_per_actor + 1e-9) if r.cpus_per_actor > 0 else 0
        fix = (f"use --num-actors {fit} or fewer (or leave --num-actors out: the default fits the cluster)" if fit >= 1
               else f"use --cpus-per-actor {max(cpus - r.read_cpus, 0):g} or less, or add CPUs to the cluster")
        reads = f" + {r.read_cpus:g} CPU for a read task" if r.read_cpus > 0 else ""
        why = ("the actors would hold every CPU and the read tasks that feed them could never run (the job would "
               "wait forever)" if r.read_cpus > 0 else "the job could never start every actor")
        raise JobError(
            f"{r.num_actors} codec actors x {r.cpus_per_actor:g} CPU (--num-actors, --cpus-per-actor){reads} = "
            f"{need:g} CPU, but the Ray cluster has {cpus:g} CPU: {why}; {fix}")


def waiting_reason(*, actors_pending: int, reads_pending: bool, request: Request,
                   available: Mapping[str, float], total: Mapping[str, float]) -> str | None:
    """Why work is not starting, from the resources free now; None when nothing looks short."""
    free_cpu, free_gpu = float(available.get("CPU", 0.0)), float(available.get("GPU", 0.0))
    have = f"the cluster has {free_cpu:g} of {float(total.get('CPU', 0.0)):g} CPU free"
    if request.gpus_per_actor > 0:
        have += f", {free_gpu:g} of {float(total.get('GPU', 0.0)):g} GPU"
    if actors_pending:
        short = []
        if free_cpu + 1e-9 < request.cpus_per_actor:
            short.append(f"{request.cpus_per_actor:g} CPU")
        if request.gpus_per_actor > 0 and free_gpu + 1e-9 < request.gpus_per_actor:
            short.append(f"{request.gpus_per_actor:g} GPU")
        if short:
            return (f"waiting for {' and '.join(short)} for {actors_pending} codec actor(s) ({have}; an "
                    "autoscaling cluster may be adding nodes)")
    if reads_pending and free_cpu + 1e-9 < request.read_cpus:
        return (f"waiting for {request.read_cpus:g} CPU for read tasks ({have}; other jobs hold the rest, or an "
                "autoscaling cluster is adding nodes)")
    return None
