"""`uti eval`: a trained run scored against the held-out split of its tokenized data, one report.

The driver reads the split once, plans every doc to score (train.evaluate.scoring) and every prompt to
generate from (train.evaluate.generation), hands the shares to Ray tasks or runs them here
(train.evaluate.workers), pools what comes back, and only then computes intervals, verdicts and the
report (train.evaluate.checks, .report). Nothing is scored before the checkpoint's and the data's
token spaces are known to be the same: a loss measured in another token space is a wrong number.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from train.census import resolve_split
from train.checkpoint import checkpoint_space, read_trainer_state
from train.config import TASKS, TrainConfig, TrainError, split_names
from train.evaluate import report as report_files
from train.evaluate.ablation import CONDITIONAL_TASKS, Dependence
from train.evaluate.baseline import Baseline, compare, load_baseline, write_baseline
from train.evaluate.checks import Results, checks_of
from train.evaluate.collapse import read_collapse
from train.evaluate.config import EvalConfig, EvalError
from train.evaluate.generation import (
    GenerationHealthError, GenerationPlan, TASK_MODE, TaskHealth, plan_generation, task_health,
)
from train.evaluate.losses import read_samples
from train.evaluate.memorization import (
    MemorizationError, MemorizationReport, TrainingSubset, memorization, read_training_subset,
)
from train.evaluate.scoring import (
    ScorePlan, ShareLosses, check_complete, dependence, plan_scoring, task_loss, text_drift,
)
from train.evaluate.workers import BaseModel, Job, generate_job, keep_files, run_in_process, run_on_ray, score_job
from train.generate import resolve_checkpoint
from train.runner import load_input_space
from uti.reports import GatedReport
from uti.token_space import TokenSpace, require_same

SCORING = "scoring"


@dataclass
class EvalResult(GatedReport):
    """What `uti eval` wrote; its exit code follows the report's verdict."""


@dataclass(frozen=True)
class Subject:
    """The checkpoint under evaluation: where it is, its token space and the config it trained with."""

    ckpt: Path
    space: TokenSpace
    train: TrainConfig
    step: int

    @property
    def run(self) -> Path:
        return self.ckpt.parent.parent


def open_subject(cfg: EvalConfig) -> Subject:
    """The checkpoint, refused unless every --data has its token space (both IDs named)."""
    ckpt = resolve_checkpoint(cfg.checkpoint)
    space = checkpoint_space(ckpt)
    for out in cfg.data:
        require_same(space, load_input_space(out), what=f"--data {out} against --checkpoint {ckpt}",
                     fix=f"evaluate a checkpoint with data of its own token space (the run's: {space.id}); "
                         "re-tokenize the data with the run's codec config, or give the run that trained on it")
    train_cfg = TrainConfig.from_dict(json.loads((ckpt / "run_config.json").read_text()), where=str(ckpt))
    state = read_trainer_state(ckpt)
    return Subject(ckpt=ckpt, space=space, train=train_cfg, step=int(state["step"]))


def run_eval(cfg: EvalConfig, *, say: Callable[[str], None] = print) -> EvalResult:
    start = time.perf_counter()
    baseline = load_baseline(cfg.baseline) if cfg.baseline else None  # a bad file stops before any work
    subject = open_subject(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    plan, counts = _score_plan(cfg, subject, say)
    gen_plans = _generation_plans(cfg, subject, skipped)
    base = _base_model(cfg, subject, plan, skipped)
    scored, files = _run_jobs(cfg, subject, plan, gen_plans, base, say)
    results = Results(
        losses={t: task_loss(tp, scored.losses[t], cfg.seed) for t, tp in plan.tasks.items()},
        dependence={t: dependence(tp, scored.losses[t], k=cfg.k, seed=cfg.seed)
                    for t, tp in plan.tasks.items() if tp.ablated},
        health={task: task_health(gp, keep_files(files[task], out), subject.space, cfg.generation, out)
                for task, gp in gen_plans.items()},
        drift=text_drift(plan.tasks["text"], scored.losses["text"], scored.base, cfg.seed) if base else None,
        collapse=read_collapse(subject.run, cfg.collapse),
        samples=counts,
        not_ablated={t: f"{len(tp.samples)} sample of the split serves {t}: an ablation needs another sample's prompt"
                     for t, tp in plan.tasks.items() if t in CONDITIONAL_TASKS and not tp.ablated},
    )
    results.memorization.update(_memorization(cfg, subject, results.health, skipped, say))
    return _finish(cfg, subject, results, baseline, skipped, time.perf_counter() - start, say)


def _score_plan(cfg: EvalConfig, subject: Subject, say: Callable[[str], None]) -> tuple[ScorePlan, dict[str, int]]:
    split = read_samples(cfg.data, cfg.split, subject.space, limit=cfg.max_samples, seed=cfg.seed)
    if not split.samples:
        raise EvalError(f"--split {cfg.split}: none of its {len(split.no_caption)} samples in {', '.join(cfg.data)} "
                        "has a caption, and every task is built from one; give a held-out split with captions")
    plan = plan_scoring(split.samples, subject.space, tasks=TASKS, k=cfg.k, seed=cfg.seed,
                        max_len=subject.train.seq_len)
    docs = sum(len(tp.pairs()) for tp in plan.tasks.values())
    chosen = f" (a seeded {len(split.samples)} of {split.captioned}: --max-samples)" \
        if len(split.samples) < split.captioned else ""
    say(f"eval: {len(split.samples)} captioned samples of split {cfg.split!r}{chosen}, {len(split.no_caption)} "
        f"without a caption; {docs} docs to score over {', '.join(plan.tasks)}")
    return plan, {"scored": len(split.samples), "captioned": split.captioned, "no_caption": len(split.no_caption),
                  "docs": docs}


def _generation_plans(cfg: EvalConfig, subject: Subject, skipped: dict[str, str]) -> dict[str, GenerationPlan]:
    plans: dict[str, GenerationPlan] = {}
    reasons = []
    for task, mode in TASK_MODE.items():
        if not subject.space.has_modality(mode):
            reasons.append(f"{task}: the token space has no {mode}")
            continue
        why = None
        for out in cfg.data:
            try:
                plans[task] = plan_generation(subject.space, subject.run, out, resolve_split(out, cfg.split), task,
                                              cfg.generation)
                break
            except GenerationHealthError as exc:
                why = str(exc)
        if task not in plans:
            reasons.append(f"{task}: {why}")
    if reasons and not plans:
        skipped["generation"] = "; ".join(reasons)
    return plans


def _base_model(cfg: EvalConfig, subject: Subject, plan: ScorePlan, skipped: dict[str, str]) -> BaseModel | None:
    if cfg.base_model is None:
        started = subject.train.model
        skipped["text_regression"] = "no --base-model given" + (
            f" (this run started from {started}: pass --base-model {started})" if started != "tiny" else
            " (this run started from the random 'tiny' model: there is no pretrained behaviour to keep)")
        return None
    if "text" not in plan.tasks:
        skipped["text_regression"] = f"the split {cfg.split!r} has no caption that fits a text doc"
        return None
    return BaseModel(path=cfg.base_model, seed=subject.train.seed, seq_len=subject.train.seq_len)


def _run_jobs(cfg: EvalConfig, subject: Subject, plan: ScorePlan, gen_plans: dict[str, GenerationPlan],
              base: BaseModel | None, say: Callable[[str], None]) -> tuple[ShareLosses, dict[str, list]]:
    """Score and generate in shares (Ray tasks, or here with num_workers 0); the pooled results."""
    count = max(cfg.num_workers, 1)
    ckpt = str(subject.ckpt)
    jobs = [Job(SCORING, score_job, (ckpt, plan, i, count, base)) for i in range(count)]
    for task, gp in gen_plans.items():
        jobs += [Job(f"{task} generation", generate_job, (ckpt, gp, cfg.generation, i, count)) for i in range(count)]
    if cfg.num_workers == 0:
        outputs = run_in_process(jobs, say)
    else:
        from uti.ray_local import connect

        started = connect(cfg.address)
        say(f"eval: {len(jobs)} Ray tasks ({count} shares each of scoring"
            + "".join(f", {t} generation" for t in gen_plans) + ")")
        try:
            outputs = run_on_ray(jobs, say)
        finally:
            if started:
                import ray

                ray.shutdown()
    scored, files = ShareLosses(), {task: [] for task in gen_plans}
    for job, result in zip(jobs, outputs):
        if job.stage == SCORING:
            scored.merge(result)
        else:
            files[job.args[1].task].extend(result)
    check_complete(plan, scored)
    return scored, files


def _memorization(cfg: EvalConfig, subject: Subject, health: dict[str, TaskHealth], skipped: dict[str, str],
                  say: Callable[[str], None]) -> dict[str, MemorizationReport]:
    """Each generating task's generations against a seeded subset of the training split(s)."""
    out: dict[str, MemorizationReport] = {}
    for task, h in health.items():
        try:
            subset = _training_subset(cfg, subject, TASK_MODE[task])
        except MemorizationError as exc:
            skipped[f"memorization.{task}"] = str(exc)
            continue
        say(f"eval: {task} generations against {len(subset)} training samples (memorization)")
        out[task] = memorization([(g.prompt.sample_id, g.tokens) for g in h.generations], subset, cfg.memorization)
    return out


def _training_subset(cfg: EvalConfig, subject: Subject, modality: str) -> TrainingSubset:
    names = split_names(cfg.train_split or subject.train.split)
    ids, tokens = [], []
    for i, data in enumerate(cfg.data):
        try:
            split = resolve_split(data, names[min(i, len(names) - 1)])
            part = read_training_subset(data, split, subject.space, modality, cfg.memorization)
        except (MemorizationError, TrainError) as exc:
            if len(cfg.data) == 1:
                raise MemorizationError(str(exc)) from None
            continue
        ids += part.ids
        tokens += [part.sample(k) for k in range(len(part))]
    if not ids:
        raise MemorizationError(f"no {modality} sample in the training split {'/'.join(names)} of the --data "
                                "inputs; give it with --train-split")
    return TrainingSubset.from_samples(ids, tokens)


def _finish(cfg: EvalConfig, subject: Subject, results: Results, baseline: Baseline | None, skipped: dict[str, str],
            seconds: float, say: Callable[[str], None]) -> EvalResult:
    report = build_report(cfg, subject, results, skipped, seconds)
    if baseline is not None:
        gate = compare(baseline, report)
        report["baseline"] = gate.to_dict()
        results.baseline = gate
    else:
        skipped["baseline"] = "no --baseline given"
    report["checks"] = [c.to_dict() for c in checks_of(results, cfg)]
    report["ok"] = all(c["verdict"] != "FAIL" for c in report["checks"] if c["hard"])
    out = Path(cfg.out)
    json_path = report_files.write_json(report, out)
    html_path = report_files.write_html(report, out, with_plots=cfg.plots)
    written = write_baseline(cfg.write_baseline, report) if cfg.write_baseline else None
    say(report_files.format_summary(report, out))
    if written:
        say(f"eval: baseline written to {written} (gate later runs with --baseline {written})")
    return EvalResult(report=report, json_path=json_path, html_path=html_path, baseline_path=written)


def build_report(cfg: EvalConfig, subject: Subject, results: Results, skipped: dict[str, str],
                 seconds: float) -> dict[str, Any]:
    """The report.json dict (its shape: train.evaluate.report); checks and verdict are added after."""
    generation = {}
    for task, h in results.health.items():
        generation[task] = h.summary() | {
            "memorization": results.memorization[task].summary() if task in results.memorization else None}
    drift = results.drift
    return {
        "format": report_files.REPORT_FORMAT, "version": report_files.REPORT_VERSION,
        "checkpoint": str(subject.ckpt), "run": str(subject.run), "step": subject.step,
        "token_space_id": subject.space.id, "data": [str(Path(d).absolute()) for d in cfg.data], "split": cfg.split,
        "num_workers": cfg.num_workers, "seed": cfg.seed, "seconds": seconds, "skipped": skipped,
        "samples": results.samples, "max_samples": cfg.max_samples,
        "losses": {t: v.to_dict() for t, v in results.losses.items()},
        "dependence": {t: _dependence_dict(d) for t, d in results.dependence.items()},
        "generation": generation or None,
        "text_regression": None if drift is None else {
            "base_model": str(Path(cfg.base_model).absolute()), "split": cfg.split, "n_docs": drift.drift.n,
            "base": drift.base.to_dict(), "trained": drift.trained.to_dict(), "drift": drift.drift.to_dict()},
        "collapse": results.collapse.to_dict() if results.collapse is not None else None,
        "baseline": None,
    }


def _dependence_dict(d: Dependence) -> dict[str, Any]:
    return {"own": d.own.to_dict(), "other": d.other.to_dict(), "empty": d.empty.to_dict(), "gap": d.gap.to_dict(),
            "empty_gap": d.empty_gap.to_dict(), "uses_prompt": d.uses_prompt, "flag": d.flag,
            "retrieval": asdict(d.retrieval)}
