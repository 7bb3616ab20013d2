"""The work `uti eval` hands out, and the two ways it runs: Ray tasks, or this process (--num-workers 0).

A job is one share of one stage (scoring the split's docs, or generating one task's prompts); every job
of a stage gets the same plan (through the object store once, not per task) and its share index. Jobs
load the checkpoint themselves, so a worker on another node needs only the run folder, never the
driver's memory. Each job returns plain results (losses, token arrays, the decoded file's bytes): the
driver writes every file, so EVAL/ can live where only the driver sees it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from train.evaluate.generation import Generation, GenerationPlan, GenerationSettings, Generator, TASK_MODE, \
    generate_share
from train.evaluate.losses import load_eval_model
from train.evaluate.scoring import ScorePlan, ShareLosses, score_share
from train.model import PackedLM, build_model
from uti.token_space import TokenSpace

WAIT_NOTE_EVERY = 10.0  # seconds between "waiting for ..." lines while jobs run


def job_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class BaseModel:
    """The pretrained LM a run started from, rebuilt as training built it (rows resized to the token space,
    new rows from the run's seed, so every worker holds the same model)."""

    path: str
    seed: int
    seq_len: int

    def load(self, space: TokenSpace, device: torch.device) -> PackedLM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model, _ = build_model(self.path, space, seed=self.seed, seq_len=self.seq_len)
        return PackedLM(model).to(device).eval()


def score_job(checkpoint: str, plan: ScorePlan, index: int, count: int, base: BaseModel | None) -> ShareLosses:
    device = job_device()
    model, space, _ = load_eval_model(checkpoint, device=device)
    return score_share(model, plan, space, index=index, count=count,
                       base=base.load(space, device) if base is not None else None)


@dataclass(frozen=True, eq=False)
class GeneratedFile:
    """One generation and its decoded file's bytes (None: decode failed)."""

    generation: Generation
    data: bytes | None


def generate_job(checkpoint: str, plan: GenerationPlan, settings: GenerationSettings, index: int,
                 count: int) -> list[GeneratedFile]:
    gen = Generator.load(checkpoint, [TASK_MODE[plan.task]])
    with tempfile.TemporaryDirectory(prefix="uti-eval-") as tmp:
        return [GeneratedFile(g, g.path.read_bytes() if g.path is not None else None)
                for g in generate_share(gen, plan, tmp, settings, index=index, count=count)]


def keep_files(files: Sequence[GeneratedFile], eval_dir: Path, folder: str = "generated") -> list[Generation]:
    """Write each decoded file under eval_dir/folder; the generations then point there, relative to eval_dir
    (report.json names files relative to its folder, so EVAL/ can be moved whole)."""
    (eval_dir / folder).mkdir(parents=True, exist_ok=True)
    kept = []
    for f in files:
        g = f.generation
        if f.data is None or g.path is None:
            kept.append(replace(g, path=None))
            continue
        rel = Path(folder) / g.path.name
        (eval_dir / rel).write_bytes(f.data)
        kept.append(replace(g, path=rel))
    return sorted(kept, key=lambda g: g.path.name if g.path else g.prompt.sample_id)


# ---- running the jobs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    stage: str  # what a wait line names ("scoring", "t2a generation")
    fn: Callable[..., Any]
    args: tuple


def run_in_process(jobs: Sequence[Job], say: Callable[[str], None]) -> list[Any]:
    out = []
    for i, job in enumerate(jobs, 1):
        say(f"eval: {job.stage} (job {i}/{len(jobs)}, in this process)")
        out.append(job.fn(*job.args))
    return out


def run_on_ray(jobs: Sequence[Job], say: Callable[[str], None]) -> list[Any]:
    """Every job as a Ray task (1 CPU, 1 GPU each where the cluster has GPUs), results in job order. Large
    arguments (the plans) go to the object store once per distinct object."""
    import ray

    from uti.ray_local import cluster_gpus

    gpus = 1 if cluster_gpus() >= 1 else 0
    put: dict[int, Any] = {}
    refs = []
    for job in jobs:
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=1)(job.fn)
        args = []
        for a in job.args:
            if isinstance(a, (ScorePlan, GenerationPlan)):
                if id(a) not in put:
                    put[id(a)] = ray.put(a)
                a = put[id(a)]
            args.append(a)
        refs.append(remote.remote(*args))
    _wait(refs, jobs, say)
    return ray.get(refs)


def _wait(refs: list, jobs: Sequence[Job], say: Callable[[str], None]) -> None:
    """Block until every job is done, saying every WAIT_NOTE_EVERY seconds which stages are still running."""
    import ray

    stage_of = {r.hex(): j.stage for r, j in zip(refs, jobs)}
    pending, last = list(refs), time.monotonic()
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if pending and time.monotonic() - last >= WAIT_NOTE_EVERY:
            left: dict[str, int] = {}
            for r in pending:
                left[stage_of[r.hex()]] = left.get(stage_of[r.hex()], 0) + 1
            total = {s: sum(1 for j in jobs if j.stage == s) for s in left}
            say("eval: waiting for " + ", ".join(f"{s} ({total[s] - n}/{total[s]} shares done)"
                                                 for s, n in left.items()))
            last = time.monotonic()
