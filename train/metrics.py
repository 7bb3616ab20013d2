"""Run metrics: one JSON line per step in RUN/metrics.jsonl, and RUN/loss.png drawn from it.

Only rank 0 writes. A resumed run first drops the lines after the checkpoint's step (the steps the
interrupted run did after its last checkpoint are redone), so the curve continues without a
duplicated or missing step.

What a line holds comes from sums over ranks: every rank fills a `StepSums` (and `EvalSums` when it
evaluates), `all_reduce_sums` adds them up over ranks with one all_reduce, and `metrics_row` /
`eval_row` turn the totals into the line's fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar
from urllib.parse import urlsplit, urlunsplit

from train.config import TASKS, is_url

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
        self.shares = InputShares()
        for r in kept:  # a resumed run's totals go on from the kept lines, so shares span the whole run
            self.shares.add(r.get("inputs") or {})

    def write(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append the step's line, with each input's realised share added; returns the line as written."""
        row = {**row, "inputs": self.shares.add(row.get("inputs") or {})}
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        return row

    def close(self) -> None:
        self._fh.close()


@dataclass
class InputShares:
    """The realised --data-weights: samples and tokens read per input since the run began (resumes
    included), and each input's share of them. A small input mixed at a large weight repeats its epochs;
    these shares are how a user sees it kept its weight instead of running dry."""

    samples: dict[str, int] = dataclasses.field(default_factory=dict)
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, step_inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Count one line's per-step `inputs`; returns them with samples_total, tokens_total,
        share_samples and share_tokens per input."""
        for label, counts in step_inputs.items():
            self.samples[label] = self.samples.get(label, 0) + int(counts.get("samples", 0))
            self.tokens[label] = self.tokens.get(label, 0) + int(counts.get("tokens", 0))
        all_samples, all_tokens = sum(self.samples.values()), sum(self.tokens.values())
        return {label: {**counts, "samples_total": self.samples[label], "tokens_total": self.tokens[label],
                        "share_samples": self.samples[label] / all_samples if all_samples else None,
                        "share_tokens": self.tokens[label] / all_tokens if all_tokens else None}
                for label, counts in step_inputs.items()}


# ---- named sums over ranks --------------------------------------------------------------------------
@dataclass(kw_only=True)
class StepSums:
    """One rank's share of a step's metrics, by name; every field is summed over ranks. A dict field
    has the same keys in the same order on every rank (tasks, SeqStats counters, input labels)."""

    ce_sum: float  # cross-entropy summed over the step's target tokens
    targets: int  # target tokens (positions with a loss)
    tokens: int  # real (not padding) tokens of the batch
    pad_tokens: int
    batch_crc: float  # CRC-32 of the rank's batch times (rank + 1): compares data positions between runs
    data_s: float  # seconds the rank waited for its batch
    ce: dict[str, float]  # per task: cross-entropy summed over its target tokens
    task_targets: dict[str, int]  # per task: target tokens
    batch_docs: dict[str, int]  # per task: docs (sequences) in this step's batch
    seq: dict[str, int]  # SeqStats counters of the stream so far (train.sequences.SeqStats.vector_to_dict)
    input_samples: dict[str, int]  # per input label: samples read during this step
    input_tokens: dict[str, int]  # per input label: their tokens (media + captions)


@dataclass(kw_only=True)
class EvalSums:
    """One rank's sums of an evaluation's loss per task (summed over ranks like StepSums)."""

    ce: dict[str, float]
    targets: dict[str, int]


S = TypeVar("S")


def all_reduce_sums(sums: S) -> S:
    """`sums` (a dataclass of numbers and dicts of numbers) summed over the ranks with ONE all_reduce:
    the fields are laid out by name into one float64 vector and read back by the same names, so a
    field added to the dataclass needs no offset anywhere. Without torch.distributed: unchanged."""
    import torch
    import torch.distributed as dist

    slots: list[tuple[str, str | None]] = []
    for f in dataclasses.fields(sums):
        value = getattr(sums, f.name)
        slots += [(f.name, key) for key in value] if isinstance(value, Mapping) else [(f.name, None)]
    flat = torch.tensor([float(_at(sums, name, key)) for name, key in slots], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat)
    out: dict[str, Any] = {}
    for (name, key), total in zip(slots, flat.tolist()):
        if key is None:
            out[name] = total
        else:
            out.setdefault(name, {})[key] = total
    return dataclasses.replace(sums, **out)


def _at(sums: Any, name: str, key: str | None) -> float:
    value = getattr(sums, name)
    return value if key is None else value[key]


def metrics_row(red: StepSums, *, step: int, lr: float, dt: float, world: int) -> dict[str, Any]:
    """A metrics.jsonl line from the step's sums over ranks. `batch_docs_T` are the docs of task T in
    this step's batch, `mix_T` the share of task T among all docs built so far (the realised --mix),
    `inputs` the samples and tokens read from each --data input during the step."""
    all_docs = sum(red.seq[f"task_{t}"] for t in TASKS)
    return {
        "step": step, "loss": red.ce_sum / max(red.targets, 1), "lr": lr, "targets": int(red.targets),
        "tokens": int(red.tokens), "pad_tokens": int(red.pad_tokens), "tokens_per_s": red.tokens / dt,
        "step_s": dt, "data_s": red.data_s / world, "batch_crc": int(red.batch_crc),
        **{f"loss_{t}": (red.ce[t] / red.task_targets[t]) if red.task_targets[t] else None for t in TASKS},
        **{f"batch_docs_{t}": int(red.batch_docs[t]) for t in TASKS},
        **{f"mix_{t}": red.seq[f"task_{t}"] / all_docs if all_docs else None for t in TASKS},
        **{k: int(v) for k, v in red.seq.items()},
        "inputs": {label: {"samples": int(red.input_samples[label]), "tokens": int(red.input_tokens[label])}
                   for label in red.input_samples},
        "time": time.time(),
    }


def eval_row(red: EvalSums) -> dict[str, Any]:
    """metrics.jsonl fields of an evaluation from the sums over ranks: eval_loss and eval_loss_T."""
    ce, n = sum(red.ce.values()), sum(red.targets.values())
    return {"eval_loss": ce / n if n else None,
            **{f"eval_loss_{t}": red.ce[t] / red.targets[t] if red.targets[t] else None for t in TASKS}}


def input_labels(outs: Iterable[str]) -> list[str]:
    """How metrics.jsonl names each --data input: its path as the run recorded it (absolute), a URL
    without user, password, query or fragment (where credentials and signed tokens live); a path
    given twice gets its position appended ("OUT#1") so every input keeps its own counts."""
    labels: list[str] = []
    for k, out in enumerate(outs):
        label = _without_credentials(out) if is_url(out) else out
        labels.append(f"{label}#{k}" if label in labels else label)
    return labels


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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
