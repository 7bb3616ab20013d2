"""Seeded bootstrap 95% intervals over per-sample values (numpy only).

Intervals are over samples, not tokens: the tokens of one sample are not independent draws, so a
per-token interval would be far too narrow. The paired form resamples the same sample indices for
both arms, so a difference between two conditions of the same samples keeps its pairing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of n per-sample values and its bootstrap percentile interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int

    def includes(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_mean(values, *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = LEVEL) -> Interval:
    """Percentile bootstrap interval of the mean. One value: the interval is that value (nothing to
    resample); no value: a ValueError (a mean of nothing is no number to report)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_mean: no values (no sample was scored)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_mean: {int((~np.isfinite(x)).sum())} of {x.size} values are not finite")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean=mean, low=mean, high=mean, n=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean=mean, low=float(low), high=float(high), n=int(x.size))


def bootstrap_mean_difference(a, b, *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES,
                              level: float = LEVEL) -> Interval:
    """Interval of mean(a - b) for paired values (a[i] and b[i] belong to the same sample)."""
    xa, xb = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"bootstrap_mean_difference: paired values differ in count ({xa.size} and {xb.size})")
    return bootstrap_mean(xa - xb, seed=seed, resamples=resamples, level=level)
