"""The verdicts of `uti eval`: which measurement passes, warns or fails, and which failures are hard.

Hard (exit 1): a conditional task whose conditioning gap's interval includes 0 (the model does not use
its prompt: what the ablation exists to catch), any generation that fails to decode, a decoded file that
is not what the token space says (rate, channels, length, size), and a baseline regression. Soft (a
warning, exit 0): memorized generations, read collapse over the run, text drift past --max-text-drift,
generated lengths far from the data's. Those need a person's judgement: a tiny set legitimately
memorizes, and a run may trade a little text loss on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from train.evaluate.ablation import NO_PROMPT_USE, Dependence
from train.evaluate.baseline import BaselineResult
from train.evaluate.collapse import Collapse
from train.evaluate.config import EvalConfig
from train.evaluate.generation import TaskHealth
from train.evaluate.losses import TaskLoss
from train.evaluate.memorization import MemorizationReport
from train.evaluate.scoring import TextDrift
from train.evaluate.stats import Interval

LENGTH_RATIO = 2.0  # generated mean frames more than this factor off the data's mean: a warning


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # PASS, FAIL, WARN, SKIP
    hard: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "hard": self.hard, "detail": self.detail}


@dataclass
class Results:
    """Everything measured, before it is turned into verdicts and the report."""

    losses: dict[str, TaskLoss]
    dependence: dict[str, Dependence]
    health: dict[str, TaskHealth]
    drift: TextDrift | None
    collapse: Collapse | None
    memorization: dict[str, MemorizationReport] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)  # the split's sample counts (scored, captioned, ...)
    not_ablated: dict[str, str] = field(default_factory=dict)  # conditional task -> why it has no ablation
    baseline: BaselineResult | None = None


def interval(iv: Interval) -> str:
    return f"{iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def dependence_check(d: Dependence) -> Check:
    r = d.retrieval
    detail = (f"gap {interval(d.gap)} nats/token (another sample's prompt minus its own; n={d.gap.n}), "
              f"empty-prompt gap {interval(d.empty_gap)}, retrieval {r.accuracy:.2f} (chance {r.chance:.2f}, K={r.k})")
    if d.uses_prompt and d.gap.mean > 0:
        return Check(f"dependence.{d.task}", "PASS", True, detail)
    why = NO_PROMPT_USE if d.uses_prompt is False else "another sample's prompt gives a LOWER loss than its own"
    return Check(f"dependence.{d.task}", "FAIL", True, f"{why}: {detail}; train longer, or check that captions "
                 "describe their media (a shuffled caption column looks exactly like this)")



def generation_checks(h: TaskHealth) -> list[Check]:
    n = len(h.generations)
    failed = [f"{f.sample_id}: {f.error}" for f in h.failures]
    decode = Check(f"generation.{h.task}.decode", "FAIL" if failed else "PASS", True,
                   f"{len(failed)} of {n} generations failed to decode" + (f" (first: {failed[0]})" if failed else ""))
    media = Check(f"generation.{h.task}.media", "FAIL" if h.check_failures else "PASS", True,
                  f"{len(h.check_failures)} decoded files differ from the token space"
                  + (f" (first: {h.check_failures[0]})" if h.check_failures else
                     f": {n - len(failed)} files at the token space's rate/size"))
    ratio = h.length.generated_mean / h.length.data_mean if h.length.data_mean else 1.0
    off = ratio > LENGTH_RATIO or ratio < 1 / LENGTH_RATIO
    length = Check(f"generation.{h.task}.length", "WARN" if off else "PASS", False,
                   f"mean {h.length.generated_mean:.1f} frames generated, {h.length.data_mean:.1f} in the data "
                   f"(x{ratio:.2f}); repeated {h.diversity.ngram}-frame share "
                   f"{h.diversity.mean_repeated_ngram_share:.2f}, "
                   f"distinct codes per level {h.diversity.distinct_per_level}")
    return [decode, media, length]


def memorization_check(task: str, m: MemorizationReport) -> Check:
    copies = m.memorized
    if not copies:
        best = max((n.run_share for n in m.nearest), default=0.0)
        return Check(f"memorization.{task}", "PASS", False,
                     f"no generation copies a training sample (longest shared run {best:.0%} of a generation; "
                     f"{m.n_train} training samples compared)")
    pairs = ", ".join(f"{n.label} ~ {n.run_sample_id} ({n.run_share:.0%})" for n in copies[:5])
    return Check(f"memorization.{task}", "WARN", False,
                 f"{len(copies)} of {len(m.nearest)} generations memorized (a run of >= "
                 f"{m.settings.run_fraction:.0%} of the generation copied from one training sample): {pairs}")


def drift_check(drift: TextDrift, limit: float) -> Check:
    detail = (f"text-only loss {drift.base.mean:.3f} (base) -> {drift.trained.mean:.3f} (trained): drift "
              f"{interval(drift.drift)} nats/token on {drift.drift.n} held-out captions")
    if drift.drift.mean > limit:
        return Check("text_regression", "WARN", False, f"{detail}; more than --max-text-drift {limit:g}")
    return Check("text_regression", "PASS", False, detail)


def collapse_checks(c: Collapse) -> list[Check]:
    if not c.flags:
        return [Check("collapse", "PASS", False, c.note or f"no task's loss rose while others fell ({c.source})")]
    return [Check(f"collapse.{f.task}", "WARN", False,
                  f"{f.task} loss rose {f.rise:+.3f} from {f.best.loss:.3f} (step {f.best.step}) to {f.last.loss:.3f} "
                  f"(step {f.last.step}) while {', '.join(f.falling)} fell ({c.source}); raise its --mix share")
            for f in c.flags]


def baseline_checks(result: BaselineResult) -> list[Check]:
    out = [Check("baseline", "PASS" if result.ok else "FAIL", True,
                 f"{result.compared} metrics compared with {result.path}" if result.ok else
                 "; ".join(r.detail for r in result.regressions))]
    out += [Check("baseline.token_space", "WARN", False, w) for w in result.warnings]
    return out


def checks_of(results: Results, cfg: EvalConfig) -> list[Check]:
    checks = [dependence_check(d) for d in results.dependence.values()]
    checks += [Check(f"dependence.{task}", "SKIP", True, why) for task, why in results.not_ablated.items()]
    for task, h in results.health.items():
        checks += generation_checks(h)
        if task in results.memorization:
            checks.append(memorization_check(task, results.memorization[task]))
    if results.drift is not None:
        checks.append(drift_check(results.drift, cfg.max_text_drift))
    if results.collapse is not None:
        checks += collapse_checks(results.collapse)
    if results.baseline is not None:
        checks += baseline_checks(results.baseline)
    return checks
