"""Mix collapse ("read collapse"): a task whose loss rose over the run while the others fell.

A mix that starves one task shows up as that task's loss climbing back from its best while the
tasks that got the batches keep improving; a loss that rose while every task rose is a run that
diverged, which is not a mix problem and is not flagged here.

The curves come from RUN/metrics.jsonl. The held-out `eval_loss_T` of --eval-split is the better
witness (the same batches at every evaluation), so it is used when some task has at least 2
evaluations; otherwise the per-step training `loss_T` is read through a trailing mean, because one
step's loss is one batch's and too noisy to call a rise on. The choice is one per run, so every
judged curve is of the same kind; `source` and `note` say which.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from train.config import TASKS
from train.metrics import METRICS_NAME, read_metrics
from uti.errors import ConfigError

EVAL_SOURCE = "eval_loss"
TRAIN_SOURCE = "loss"
MIN_POINTS = 2


@dataclass(frozen=True)
class CollapseSettings:
    min_rise: float = 0.05  # nats per token above the task's best before its rise is a collapse
    window: int = 20  # steps (with the task) in the trailing mean of the training-loss curves
    max_points: int = 400  # points per task kept in the report's series; judging uses them all

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_rise) and self.min_rise >= 0):
            raise ConfigError(f"collapse min_rise must be a finite number of nats >= 0, got {self.min_rise!r}")
        if self.window < 1 or self.max_points < MIN_POINTS:
            raise ConfigError(f"collapse window must be >= 1 and max_points >= {MIN_POINTS}, got "
                              f"{self.window} and {self.max_points}")


@dataclass(frozen=True)
class Point:
    step: int
    loss: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": self.loss}


@dataclass(frozen=True)
class CollapseFlag:
    """`task`'s last loss is `rise` nats above its best at an earlier step, while `falling` ended below
    where they started."""

    task: str
    best: Point
    last: Point
    rise: float
    falling: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "best": self.best.to_dict(), "last": self.last.to_dict(), "rise": self.rise,
                "falling": list(self.falling)}


@dataclass(frozen=True)
class Collapse:
    """The report's "collapse" section: the curves judged (`source` says which loss; thinned to the
    settings' max_points, the flags were judged on every point), the flags, and a note on what could
    not be judged and why (None when everything was)."""

    source: str | None
    series: dict[str, list[Point]]
    flags: tuple[CollapseFlag, ...]
    note: str | None

    @property
    def collapsed(self) -> bool:
        return bool(self.flags)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "series": {t: [[p.step, p.loss] for p in s] for t, s in self.series.items()},
                "flags": [f.to_dict() for f in self.flags], "note": self.note}


def thin(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most `max_points` evenly spaced points, first and last kept (a plot needs no more)."""
    if len(points) <= max_points:
        return list(points)
    last = len(points) - 1
    picks = sorted({round(k * last / (max_points - 1)) for k in range(max_points)})
    return [points[k] for k in picks]


def eval_series(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Point]]:
    """Per task, (step, eval_loss_T) at every evaluation that had the task."""
    return _series(rows, "eval_loss_")


def training_series(rows: Sequence[Mapping[str, Any]], window: int) -> dict[str, list[Point]]:
    """Per task, the trailing mean of loss_T over the last `window` steps that had the task."""
    return {task: [Point(p.step, m) for p, m in zip(raw, trailing_mean([p.loss for p in raw], window))]
            for task, raw in _series(rows, "loss_").items()}


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the up to window-1 before it (the first ones average fewer)."""
    out, total = [], 0.0
    for k, v in enumerate(values):
        total += v - (values[k - window] if k >= window else 0.0)
        out.append(total / min(k + 1, window))
    return out


def _series(rows: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, list[Point]]:
    ordered = sorted((r for r in rows if isinstance(r.get("step"), (int, float))), key=lambda r: r["step"])
    out: dict[str, list[Point]] = {}
    for task in TASKS:
        pts = [Point(int(r["step"]), float(r[prefix + task])) for r in ordered
               if isinstance(r.get(prefix + task), (int, float)) and math.isfinite(r[prefix + task])]
        if pts:
            out[task] = pts
    return out


def judge(series: Mapping[str, Sequence[Point]], min_rise: float) -> list[CollapseFlag]:
    """Flag each task whose last loss is more than `min_rise` above its best earlier loss, when at
    least one other task's last loss is below its first. Tasks with fewer than 2 points are skipped."""
    judged = {t: s for t, s in series.items() if len(s) >= MIN_POINTS}
    fell = {t for t, s in judged.items() if s[-1].loss < s[0].loss}
    flags = []
    for task, s in judged.items():
        best = min(s[:-1], key=lambda p: p.loss)
        rise = s[-1].loss - best.loss
        falling = tuple(t for t in judged if t in fell and t != task)
        if rise > min_rise and falling:
            flags.append(CollapseFlag(task=task, best=best, last=s[-1], rise=rise, falling=falling))
    return flags


def mix_collapse(rows: Sequence[Mapping[str, Any]], settings: CollapseSettings = CollapseSettings()) -> Collapse:
    """The collapse section from metrics.jsonl rows (pure: nothing is read)."""
    evals = eval_series(rows)
    if any(len(s) >= MIN_POINTS for s in evals.values()):
        source, series, notes = EVAL_SOURCE, evals, []
    else:
        source, series = TRAIN_SOURCE, training_series(rows, settings.window)
        notes = [f"read from the training loss_T (trailing mean over {settings.window} steps): the run has fewer "
                 f"than {MIN_POINTS} evaluations per task (train with --eval-split for held-out curves)"]
    if not series:
        return Collapse(source=None, series={}, flags=(), note="metrics.jsonl has no per-task loss: nothing to read")
    short = [f"{t} ({len(s)} point)" for t, s in series.items() if len(s) < MIN_POINTS]
    if short:
        notes.append(f"not judged, fewer than {MIN_POINTS} points: {', '.join(short)}")
    judged = [t for t, s in series.items() if len(s) >= MIN_POINTS]
    if len(judged) == 1:
        notes.append(f"only {judged[0]} has a curve: one task cannot collapse against the others")
    return Collapse(source=source, series={t: thin(s, settings.max_points) for t, s in series.items()},
                    flags=tuple(judge(series, settings.min_rise)),
                    note="; ".join(notes) or None)


def read_collapse(run_dir: str | os.PathLike, settings: CollapseSettings = CollapseSettings()) -> Collapse:
    """mix_collapse over RUN/metrics.jsonl; a run without one gives a result that says so."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return Collapse(source=None, series={}, flags=(),
                        note=f"no {METRICS_NAME} in {Path(run_dir)}: collapse not read (was the run trained by uti "
                             f"train, and is --checkpoint its RUN folder?)")
    return mix_collapse(read_metrics(run_dir), settings)
