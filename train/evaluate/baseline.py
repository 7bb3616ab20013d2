"""Gate an eval report on a baseline: `uti eval --baseline FILE` fails when a metric moved past its limit.

A baseline is a flat {metric name: number} map read from a report (`loss.t2a`, `gap.t2a`,
`retrieval.t2a`, `generation.t2a.failure_rate`, `text_regression.drift`), so a regression is named
by the metric a person starts looking at. The limits are written into the file next to the metrics
so they can be edited there: one per metric family (the name before its first dot), and optionally
one per metric by its full name, which wins over its family's.

Each family moves one bad way, and its limit is how far it may go that way:
  loss             may rise by at most the limit, in nats per token (absolute);
  gap              may shrink by at most the limit as a share of the baseline gap (a baseline gap <= 0
                   says the model did not use its prompt then, so there is nothing to keep);
  retrieval        may drop by at most the limit (absolute accuracy);
  generation       (the decode failure rate) may rise by at most the limit;
  text_regression  (the text-only drift) may rise by at most the limit, in nats per token.
A metric of the baseline that the eval did not measure is a regression too: a gate that silently
loses a metric passes everything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from uti.errors import ConfigError, UTIError

FORMAT = "uti.eval_baseline"
VERSION = 1
KEYS = ("format", "version", "token_space_id", "checkpoint", "metrics", "limits")
WRITE_HINT = "write one with `uti eval --checkpoint RUN --data OUT --out EVAL --write-baseline FILE`"
_EPS = 1e-12  # float noise: a metric exactly at its limit passes


@dataclass(frozen=True)
class Rule:
    """How a family regresses: the direction that is worse, and whether the limit is a share."""

    worse: str  # "rise", "drop" or "shrink"
    moved: str  # the same in the past tense, for the detail line
    unit: str = ""
    relative: bool = False

    def excess(self, baseline: float, current: float) -> float | None:
        """How far `current` moved the bad way from `baseline` (a share of it when relative); None
        when the rule does not gate this baseline value."""
        if self.worse == "rise":
            return current - baseline
        if self.worse == "drop":
            return baseline - current
        return (baseline - current) / baseline if baseline > 0 else None

    def words(self, limit: float) -> str:
        if self.relative:
            return f"{self.worse} <= {limit:.0%} of the baseline"
        return f"{self.worse} <= {limit:g}{self.unit}"


RULES: dict[str, Rule] = {
    "loss": Rule("rise", "rose", " nats"),
    "gap": Rule("shrink", "shrank", relative=True),
    "retrieval": Rule("drop", "dropped"),
    "generation": Rule("rise", "rose"),
    "text_regression": Rule("rise", "rose", " nats"),
}


def family(metric: str) -> str:
    return metric.split(".", 1)[0]


@dataclass(frozen=True)
class BaselineLimits:
    """How far each metric family may move the bad way (see the module docstring), and per-metric
    overrides by full name (`"loss.t2a": 0.2`)."""

    loss: float = 0.05
    gap: float = 0.5
    retrieval: float = 0.1
    generation: float = 0.0
    text_regression: float = 0.05
    overrides: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in [*((f, getattr(self, f)) for f in RULES), *self.overrides.items()]:
            if not _number(value) or value < 0:
                raise ConfigError(f"baseline limit {name}: must be a finite number >= 0, got {value!r}")

    def of(self, metric: str) -> float:
        return self.overrides.get(metric, getattr(self, family(metric)))

    def to_dict(self) -> dict[str, float]:
        """Flat, as the file holds it: the families, then the overrides by full name."""
        return {**{f: getattr(self, f) for f in RULES}, **dict(sorted(self.overrides.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> "BaselineLimits":
        """A key is a family or `family.name`; any other key is refused, naming it and `where`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: 'limits' must be an object of metric family (or metric) to number")
        families, overrides = {}, {}
        for key, value in data.items():
            if key in RULES:
                families[key] = value
            elif "." in key and family(key) in RULES:
                overrides[key] = value
            else:
                raise ConfigError(f"{where}: unknown limit {key!r}; limits are keyed by a metric family "
                                  f"({', '.join(RULES)}) or by a metric's full name such as 'loss.t2a'")
        try:
            return cls(**families, overrides=overrides)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Baseline:
    path: Path
    token_space_id: str | None
    checkpoint: str | None
    metrics: dict[str, float]
    limits: BaselineLimits


@dataclass(frozen=True)
class Regression:
    metric: str
    baseline: float
    current: float | None  # None: the eval did not measure it (or measured no finite number)
    limit: str  # in words, e.g. "rise <= 0.05 nats"
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "current": self.current, "limit": self.limit,
                "detail": self.detail}


@dataclass(frozen=True)
class BaselineResult:
    """The report's "baseline" section; `warnings` (a token space that differs) do not fail the gate
    and are not part of the section: the driver shows them as a WARN check."""

    path: str
    compared: int
    regressions: tuple[Regression, ...]
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "compared": self.compared, "regressions": [r.to_dict() for r in self.regressions]}


def metrics_from(report: Mapping[str, Any]) -> dict[str, float]:
    """The gated metrics of an eval report; a section that did not run gives none."""
    m: dict[str, float] = {}
    for task, loss in sorted((report.get("losses") or {}).items()):
        m[f"loss.{task}"] = loss["mean"]
    for task, dep in sorted((report.get("dependence") or {}).items()):
        if dep.get("gap"):
            m[f"gap.{task}"] = dep["gap"]["mean"]
        if (dep.get("retrieval") or {}).get("accuracy") is not None:
            m[f"retrieval.{task}"] = dep["retrieval"]["accuracy"]
    for task, gen in sorted((report.get("generation") or {}).items()):
        if gen.get("failure_rate") is not None:
            m[f"generation.{task}.failure_rate"] = gen["failure_rate"]
    drift = (report.get("text_regression") or {}).get("drift")
    if drift:
        m["text_regression.drift"] = drift["mean"]
    return {name: float(v) for name, v in m.items()}


def write_baseline(path: str | os.PathLike, report: Mapping[str, Any],
                   limits: BaselineLimits | None = None) -> Path:
    """The report's metrics and the limits (the defaults unless given), written out in full so a
    person can edit them."""
    path, limits = Path(path), limits or BaselineLimits()
    metrics = metrics_from(report)
    bad = [name for name, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise UTIError(f"baseline {path}: not written, {', '.join(bad)} is not a finite number in this report")
    data = {"format": FORMAT, "version": VERSION, "token_space_id": report.get("token_space_id"),
            "checkpoint": report.get("checkpoint"), "metrics": metrics, "limits": limits.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_baseline(path: str | os.PathLike) -> Baseline:
    """Read and check a baseline; anything wrong is a UTIError naming the file and the fix, raised
    before any evaluation work."""
    path = Path(path).absolute()
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        found = (data.get("format"), data.get("version")) if isinstance(data, dict) else type(data).__name__
        raise UTIError(f"baseline {path}: not a {FORMAT} v{VERSION} file (found {found}); {WRITE_HINT}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UTIError(f"baseline {path}: unknown key(s) {', '.join(map(repr, unknown))}; a baseline holds "
                       f"{', '.join(KEYS)}")
    metrics = _metrics(data.get("metrics"), path)
    limits = BaselineLimits.from_dict(data.get("limits", {}), where=f"baseline {path}")
    stray = sorted(set(limits.overrides) - set(metrics))
    if stray:
        raise UTIError(f"baseline {path}: limit(s) {', '.join(map(repr, stray))} name no metric of this baseline; "
                       f"its metrics are {', '.join(sorted(metrics))}")
    return Baseline(path=path, token_space_id=data.get("token_space_id"), checkpoint=data.get("checkpoint"),
                    metrics=metrics, limits=limits)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UTIError(f"baseline {path} does not exist; {WRITE_HINT.replace('FILE', str(path))}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UTIError(f"baseline {path}: not readable JSON ({exc}); fix it or {WRITE_HINT}") from None


def _metrics(metrics: Any, path: Path) -> dict[str, float]:
    if not isinstance(metrics, dict):
        raise UTIError(f"baseline {path}: 'metrics' must map metric names to numbers; {WRITE_HINT}")
    for name, value in metrics.items():
        if family(name) not in RULES:
            raise UTIError(f"baseline {path}: metric {name!r} is of no known family ({', '.join(RULES)})")
        if not _number(value):
            raise UTIError(f"baseline {path}: metric {name!r} is {value!r}, not a finite number")
    return {name: float(v) for name, v in metrics.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare(baseline: Baseline, report: Mapping[str, Any]) -> BaselineResult:
    """One regression per baseline metric that moved past its limit or was not measured now."""
    current = metrics_from(report)
    regressions = [r for name, b in sorted(baseline.metrics.items())
                   if (r := _regression(name, b, current.get(name), baseline)) is not None]
    warnings = []
    space = report.get("token_space_id")
    if baseline.token_space_id != space:
        warnings.append(f"the baseline {baseline.path} was made in token space {str(baseline.token_space_id)[:12]}, "
                        f"this eval is in {str(space)[:12]}: its losses may not be comparable")
    return BaselineResult(path=str(baseline.path), compared=len(baseline.metrics), regressions=tuple(regressions),
                          warnings=tuple(warnings))


def _regression(name: str, b: float, c: float | None, baseline: Baseline) -> Regression | None:
    rule, limit = RULES[family(name)], baseline.limits.of(name)
    words = rule.words(limit)
    if c is None or not math.isfinite(c):
        what = "absent now: the eval did not measure it" if c is None else f"{c} now, not a finite number"
        return Regression(name, b, None, words,
                          f"{name}: {b:.4g} in the baseline, {what}; run the eval with the baseline's data and "
                          f"sections, or write a new baseline with --write-baseline {baseline.path}")
    excess = rule.excess(b, c)
    if excess is None or excess <= limit + _EPS:
        return None
    moved = f"by {excess:.0%} of it" if rule.relative else f"by {excess:.4g}{rule.unit}"
    where = "limits." + (name if name in baseline.limits.overrides else family(name))
    return Regression(name, b, c, words, f"{name}: {b:.4g} in the baseline, {c:.4g} now: {rule.moved} {moved} "
                                         f"(limit {words}; loosen {where} in {baseline.path})")
