"""Every loss `uti eval` needs, planned once and scored in shares: the unit a worker runs.

A split's docs are laid out as a plan (ScorePlan): per task, its eligible samples in reader order and
the (prompt, target) pairs to score. p == t is the sample's own doc as training builds it (the held-out
loss, and the ablation's condition (a)); p >= 0 otherwise is target t's doc with the prompt of sample p
(condition (b), and the retrieval candidates); p == EMPTY is the empty prompt (condition (c)). The plan
depends only on the samples and the seed, so every worker builds the same one from the same split and
scores the pairs whose target falls in its share (t % count == index). The driver pools the per-pair
losses of every share before any interval is computed: bootstrap intervals are over all samples, never
per worker.

With a base model (text regression) the `text` task's own docs are scored by it too, under the same
pairs, so the drift is paired sample by sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from train.evaluate.ablation import (
    CONDITIONAL_TASKS, Dependence, Retrieval, derangement, prompt_of, retrieval_candidates, retrieval_credit,
    with_prompt, NO_PROMPT_USE,
)
from train.evaluate.losses import DocLoss, EvalSample, TaskLoss, doc_losses, task_samples
from train.evaluate.stats import Interval, bootstrap_mean, bootstrap_mean_difference
from train.model import PackedLM
from train.sequences import Doc, Specials
from uti.token_space import TokenSpace

EMPTY = -1  # the prompt index of condition (c): no prompt


@dataclass(frozen=True, eq=False)
class TaskPlan:
    """One task's eligible samples and the pairs to score; `perm`/`candidates` only for conditional tasks
    with at least 2 samples (an ablation needs another sample's prompt)."""

    task: str
    samples: list[EvalSample]
    too_long: int  # samples that serve the task but whose doc exceeds the model's length
    perm: np.ndarray | None = None
    candidates: np.ndarray | None = None

    @property
    def ablated(self) -> bool:
        return self.perm is not None

    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.samples)
        pairs = {(t, t) for t in range(n)}
        if self.ablated:
            pairs |= {(int(self.perm[t]), t) for t in range(n)} | {(EMPTY, t) for t in range(n)}
            pairs |= {(int(p), t) for t in range(n) for p in self.candidates[t]}
        return sorted(pairs, key=lambda pt: (pt[1], pt[0]))


@dataclass(frozen=True, eq=False)
class ScorePlan:
    tasks: dict[str, TaskPlan]
    k: int
    seed: int


def plan_scoring(samples: Sequence[EvalSample], space: TokenSpace, *, tasks: Sequence[str], k: int, seed: int,
                 max_len: int | None) -> ScorePlan:
    sp = Specials.from_space(space)
    plans: dict[str, TaskPlan] = {}
    for task in tasks:
        serving = [s for s in samples if task in s.tasks()]
        eligible = task_samples(serving, task, max_len=max_len, sp=sp)
        if not eligible:
            continue
        n = len(eligible)
        if task in CONDITIONAL_TASKS and n >= 2:
            plans[task] = TaskPlan(task, eligible, len(serving) - n, perm=derangement(n, seed),
                                   candidates=retrieval_candidates(n, min(k, n), seed))
        else:
            plans[task] = TaskPlan(task, eligible, len(serving) - n)
    return ScorePlan(tasks=plans, k=k, seed=seed)


@dataclass
class ShareLosses:
    """What one share returns: per task, (prompt, target) -> the loss of that doc; `base` the base model's
    losses of the `text` task's own docs (text regression), by target."""

    losses: dict[str, dict[tuple[int, int], DocLoss]] = field(default_factory=dict)
    base: dict[int, DocLoss] = field(default_factory=dict)

    def merge(self, other: "ShareLosses") -> None:
        for task, by_pair in other.losses.items():
            self.losses.setdefault(task, {}).update(by_pair)
        self.base.update(other.base)


def pair_doc(plan: TaskPlan, docs: Sequence[Doc], p: int, t: int, sp: Specials) -> Doc:
    if p == t:
        return docs[t]
    return with_prompt(docs[t], np.zeros(0, np.int64) if p == EMPTY else prompt_of(docs[p], sp), sp)


def score_share(model: PackedLM, plan: ScorePlan, space: TokenSpace, *, index: int = 0, count: int = 1,
                base: PackedLM | None = None) -> ShareLosses:
    """The losses of the pairs whose target is in share `index` of `count`."""
    sp = Specials.from_space(space)
    out = ShareLosses()
    for task, tp in plan.tasks.items():
        docs = [s.doc(task, sp) for s in tp.samples]
        pairs = [(p, t) for p, t in tp.pairs() if t % count == index]
        scored = doc_losses(model, [pair_doc(tp, docs, p, t, sp) for p, t in pairs], vocab_size=space.vocab_size,
                            pad_id=sp.pad)
        out.losses[task] = dict(zip(pairs, scored))
        if base is not None and task == "text":
            mine = [t for t in range(len(docs)) if t % count == index]
            out.base = dict(zip(mine, doc_losses(base, [docs[t] for t in mine], vocab_size=space.vocab_size,
                                                 pad_id=sp.pad)))
    return out


def check_complete(plan: ScorePlan, scored: ShareLosses) -> None:
    """Every planned pair came back (a share lost would bias every interval silently)."""
    for task, tp in plan.tasks.items():
        missing = [pt for pt in tp.pairs() if pt not in scored.losses.get(task, {})]
        if missing:
            raise RuntimeError(f"eval: {len(missing)} {task} docs were planned but not scored (first: prompt "
                               f"{missing[0][0]}, target {missing[0][1]}); a worker's share is missing")


# ---- from pooled losses to the report's numbers ------------------------------------------------------------
def task_loss(tp: TaskPlan, losses: dict[tuple[int, int], DocLoss], seed: int) -> TaskLoss:
    own = [losses[(t, t)] for t in range(len(tp.samples))]
    iv = bootstrap_mean([d.mean for d in own], seed=seed)
    return TaskLoss(task=tp.task, mean=iv.mean, low=iv.low, high=iv.high, n_samples=iv.n,
                    n_tokens=sum(d.tokens for d in own))


def dependence(tp: TaskPlan, losses: dict[tuple[int, int], DocLoss], *, k: int, seed: int) -> Dependence:
    n = len(tp.samples)
    at = {pt: d.mean for pt, d in losses.items()}
    own = np.array([at[(t, t)] for t in range(n)])
    other = np.array([at[(int(tp.perm[t]), t)] for t in range(n)])
    empty = np.array([at[(EMPTY, t)] for t in range(n)])
    gap = bootstrap_mean_difference(other, own, seed=seed)
    credit = [retrieval_credit(own[t], np.array([at[(int(p), t)] for p in tp.candidates[t, 1:]])) for t in range(n)]
    k_used = tp.candidates.shape[1]
    note = None if k_used == k else f"K={k_used}, not {k}: the split has {n} {tp.task} samples"
    uses = not gap.includes(0.0)
    return Dependence(task=tp.task, own=bootstrap_mean(own, seed=seed), other=bootstrap_mean(other, seed=seed),
                      empty=bootstrap_mean(empty, seed=seed), gap=gap,
                      empty_gap=bootstrap_mean_difference(empty, own, seed=seed), uses_prompt=uses,
                      flag=None if uses else NO_PROMPT_USE,
                      retrieval=Retrieval(accuracy=float(np.mean(credit)), k=k_used, chance=1.0 / k_used, note=note))


@dataclass(frozen=True)
class TextDrift:
    """The text-only loss of the base model and the trained one on the same held-out text docs."""

    base: Interval
    trained: Interval
    drift: Interval  # trained - base, paired


def text_drift(tp: TaskPlan, losses: dict[tuple[int, int], DocLoss], base: dict[int, DocLoss], seed: int) -> TextDrift:
    n = len(tp.samples)
    trained = np.array([losses[(t, t)].mean for t in range(n)])
    before = np.array([base[t].mean for t in range(n)])
    return TextDrift(base=bootstrap_mean(before, seed=seed), trained=bootstrap_mean(trained, seed=seed),
                     drift=bootstrap_mean_difference(trained, before, seed=seed))


# ---- in one process: plan, score and summarise -----------------------------------------------------------
def task_losses(model: PackedLM, samples: Sequence[EvalSample], space: TokenSpace, *,
                tasks: Sequence[str] = ("a2t", "t2a", "i2t", "t2i", "text"), max_len: int | None = None,
                seed: int = 0) -> dict[str, TaskLoss]:
    """The held-out loss of every task in `tasks` that at least one sample serves."""
    plan = plan_scoring(samples, space, tasks=tasks, k=1, seed=seed, max_len=max_len)
    plan = ScorePlan(tasks={t: TaskPlan(t, tp.samples, tp.too_long) for t, tp in plan.tasks.items()}, k=1, seed=seed)
    scored = score_share(model, plan, space)
    return {t: task_loss(tp, scored.losses[t], seed) for t, tp in plan.tasks.items()}


def conditional_dependence(model: PackedLM, samples: Sequence[EvalSample], space: TokenSpace, *,
                           tasks: Sequence[str] = CONDITIONAL_TASKS, k: int = 10, seed: int = 0,
                           max_len: int | None = None) -> dict[str, Dependence]:
    """The prompt ablation of every conditional task in `tasks` that at least 2 samples serve."""
    plan = plan_scoring(samples, space, tasks=[t for t in tasks if t in CONDITIONAL_TASKS], k=k, seed=seed,
                        max_len=max_len)
    scored = score_share(model, plan, space)
    return {t: dependence(tp, scored.losses[t], k=k, seed=seed) for t, tp in plan.tasks.items() if tp.ablated}
