"""Mergeable statistics: fixed-bin length histograms and per-level code histograms.

Fixed bins are what make a per-shard summary small and the reduce exact: two histograms over the
same edges add up, whatever the dataset size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Quarter-octave edges from 1 to 2**24 tokens (plus 0 and +inf): 4-6% wide, enough to see a mode.
LENGTH_EDGES: np.ndarray = np.concatenate((
    [0.0], np.unique(np.round(2.0 ** (np.arange(0, 97) / 4.0))), [np.inf],
))


@dataclass
class LengthStats:
    """Token lengths of one series (e.g. `audio.media`): count, moments, extremes, histogram, over-limit count."""

    count: int = 0
    total: int = 0
    total_sq: float = 0.0
    min: int | None = None
    max: int | None = None
    over_limit: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LENGTH_EDGES) - 1, dtype=np.int64))

    def add(self, n: int, limit: int | None = None) -> None:
        self.count += 1
        self.total += n
        self.total_sq += float(n) * n
        self.min = n if self.min is None else min(self.min, n)
        self.max = n if self.max is None else max(self.max, n)
        self.hist[int(np.searchsorted(LENGTH_EDGES, n, side="right")) - 1] += 1
        if limit is not None and n > limit:
            self.over_limit += 1

    def merge(self, other: "LengthStats") -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        for name, pick in (("min", min), ("max", max)):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, theirs if mine is None else mine if theirs is None else pick(mine, theirs))
        self.over_limit += other.over_limit
        self.hist += other.hist

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        if not self.count:
            return 0.0
        return math.sqrt(max(0.0, self.total_sq / self.count - self.mean ** 2))

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding quantile q (an upper bound within one bin width)."""
        if not self.count:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.hist), q * self.count, side="left"))
        upper = LENGTH_EDGES[min(idx + 1, len(LENGTH_EDGES) - 1)]
        return float(min(upper, self.max if self.max is not None else upper))

    def to_dict(self) -> dict:
        nz = np.nonzero(self.hist)[0]
        return {
            "count": self.count, "mean": round(self.mean, 3), "std": round(self.std, 3), "min": self.min,
            "max": self.max, "p50_upper": self.quantile(0.5), "p99_upper": self.quantile(0.99),
            "over_limit": self.over_limit,
            # Sparse: only the non-empty bins, as [low edge, high edge, count].
            "histogram": [[float(LENGTH_EDGES[i]), float(LENGTH_EDGES[i + 1]), int(self.hist[i])] for i in nz],
        }


def codebook_metrics(counts: np.ndarray) -> dict:
    """Utilization (share of codes used), perplexity (exp of the usage entropy) and dead codes of one level."""
    total = int(counts.sum())
    used = int(np.count_nonzero(counts))
    if total:
        p = counts[counts > 0] / total
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
    else:
        perplexity = 0.0
    return {
        "codebook_size": int(counts.size), "tokens": total, "used": used, "dead": int(counts.size - used),
        "utilization": used / counts.size if counts.size else 0.0, "perplexity": perplexity,
        "perplexity_ratio": perplexity / counts.size if counts.size else 0.0,
    }
