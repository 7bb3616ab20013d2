"""Check 12: store a run's headline metrics as a baseline, and gate later runs on them.

A baseline is a flat {metric name: number} map, so a regression is reported by the metric's own
name (`codebook.audio.l3.utilization`, `samples.split.train`, `error_rate`), which is what a person
needs to start looking.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from uti.errors import UTIError
from uti.token_space import canonical_json
from verify.config import BaselineLimits
from verify.findings import Check, CheckResult, Finding

FORMAT = "uti.verify_baseline"
VERSION = 1


def metrics_from(report: dict[str, Any]) -> dict[str, float]:
    """The gated metrics of a (partial) report: counts, error rate, utilization, mean lengths."""
    m: dict[str, float] = {}
    s = report["summary"]
    m["samples.total"] = s["samples"]
    for split, n in sorted(s["samples_per_split"].items()):
        m[f"samples.split.{split}"] = n
    for modality, n in sorted(s["samples_per_modality"].items()):
        m[f"samples.modality.{modality}"] = n
    m["errors.total"] = s["errors"]
    m["error_rate"] = s["error_rate"]
    for level, c in sorted(report["codebooks"].items()):
        m[f"codebook.{level}.utilization"] = c["utilization"]
        m[f"codebook.{level}.perplexity"] = c["perplexity"]
    for series, st in sorted(report["lengths"].items()):
        if not series.endswith(".sequence"):
            m[f"length.{series}.mean"] = st["mean"]
    return m


def write_baseline(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, "token_space_id": report["token_space_id"],
            "dataset": report["dataset"], "ok": report.get("ok"), "metrics": metrics_from(report)}
    path.write_bytes(canonical_json(data) + b"\n")
    return path


def load_baseline(path: str | os.PathLike) -> dict[str, Any]:
    """Read a baseline; a missing or malformed file is a user error (exit 2), found before any work."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UTIError(f"baseline {path} does not exist; write one with --write-baseline {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UTIError(f"baseline {path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise UTIError(f"baseline {path}: not a {FORMAT} v{VERSION} file (written by --write-baseline)")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in metrics.values()):
        raise UTIError(f"baseline {path}: 'metrics' must map names to numbers")
    return data


def compare(baseline: dict[str, Any], current: dict[str, float], *, limits: BaselineLimits, where: str,
            token_space_id: str) -> CheckResult:
    """One finding per regressed metric, named in the detail; unknown metric kinds are not gated."""
    result = CheckResult(name=Check.BASELINE, ok=True, hard=True)
    regressed: list[str] = []
    base = baseline["metrics"]

    def regress(name: str, detail: str) -> None:
        regressed.append(name)
        result.examples.append(Finding(Check.BASELINE, None, None, None, f"{name}: {detail}"))

    drop, growth = limits.count_drop, limits.count_growth
    for name, b in sorted(base.items()):
        c = current.get(name)
        if name.startswith("samples."):
            c = 0 if c is None else c  # a split or modality that vanished has 0 samples
            if c < b and _rel(b, c) > drop:
                regress(name, f"{b:g} in the baseline, {c:g} now: {_rel(b, c):.1%} fewer (limit {_pct(drop)} fewer; "
                              "raise it with --baseline-tolerance F)")
            elif c > b and growth is not None and _rel(b, c) > growth:
                regress(name, f"{b:g} in the baseline, {c:g} now: {_rel(b, c):.1%} more (limit {_pct(growth)} more)")
        elif name == "error_rate":
            if c is not None and (c - b) * 100 > limits.error_rate_pp:
                regress(name, f"{b * 100:.3f}% in the baseline, {c * 100:.3f}% now "
                              f"(limit +{limits.error_rate_pp:g} percentage points)")
        elif name.endswith(".utilization") and name.startswith("codebook."):
            c = 0.0 if c is None else c
            if b > 0 and (b - c) / b > limits.utilization_rel_drop:
                regress(name, f"{b:.4f} in the baseline, {c:.4f} now: a {(b - c) / b:.1%} relative drop "
                              f"(limit {limits.utilization_rel_drop:.0%})")
        elif name.startswith("length.") and name.endswith(".mean"):
            if c is not None and _rel(b, c) > limits.mean_length_rel_change:
                regress(name, f"{b:.2f} tokens in the baseline, {c:.2f} now (limit "
                              f"{limits.mean_length_rel_change:.0%} change)")
    for name in sorted(set(current) - set(base)):
        # A new split or modality is growth: gated only when growth is limited.
        if name.startswith("samples.") and current[name] and growth is not None:
            regress(name, f"absent from the baseline, {current[name]:g} now (limit {_pct(growth)} more)")
    result.failures = len(regressed)
    result.ok = not regressed
    result.counts = {"baseline": where, "metrics_compared": len(base), "regressed": regressed,
                     "sample_count_limits": {"drop": drop, "growth": growth}}
    if baseline.get("token_space_id") != token_space_id:
        result.warnings.append(f"the baseline was made in token space {str(baseline.get('token_space_id'))[:12]}, "
                               f"this dataset is {token_space_id[:12]}: codebook metrics may not be comparable")
    return result


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _rel(b: float, c: float) -> float:
    if b == c:
        return 0.0
    return abs(c - b) / abs(b) if b else float("inf")
