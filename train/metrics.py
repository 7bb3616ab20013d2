"""Run metrics: one JSON line per step in RUN/metrics.jsonl, and RUN/loss.png drawn from it.

Only rank 0 writes. A resumed run first drops the lines after the checkpoint's step (the steps the
interrupted run did after its last checkpoint are redone), so the curve continues without a
duplicated or missing step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"


class MetricsLog:
    def __init__(self, run: str | os.PathLike, *, resume_step: int | None):
        self.path = Path(run) / METRICS_NAME
        kept = [r for r in read_metrics(run) if resume_step is not None and int(r.get("step", 0)) <= resume_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run) / METRICS_NAME
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash mid-write; the step is redone on resume
                continue
    return rows


def plot_loss(run: str | os.PathLike, rows: Iterable[dict[str, Any]] | None = None) -> Path | None:
    """loss.png: total and per-task training loss against step, and the held-out loss of --eval-split
    where it was measured (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from train.config import TASKS

    rows = list(read_metrics(run) if rows is None else rows)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, [r["loss"] for r in rows], label="loss (all targets)", color="black", linewidth=1.5)
    for task in TASKS:
        pts = [(r["step"], r[f"loss_{task}"]) for r in rows if r.get(f"loss_{task}") is not None]
        if pts:
            ax.plot(*zip(*pts), label=f"{task}", linewidth=0.8, alpha=0.8)
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if evals:  # --eval-split: the held-out loss, total and per task, as marked dashed lines
        ax.plot(*zip(*evals), label="eval loss (held out)", color="black", linestyle="--", marker="o", markersize=3)
        for task in TASKS:
            pts = [(r["step"], r[f"eval_loss_{task}"]) for r in rows if r.get(f"eval_loss_{task}") is not None]
            if pts:
                ax.plot(*zip(*pts), label=f"eval {task}", linestyle="--", marker=".", linewidth=0.8, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"{Path(run).name}: training loss" + (" and held-out loss" if evals else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(run) / PLOT_NAME
    fig.savefig(out)
    plt.close(fig)
    return out
