"""Memorization: how close each generation is to its nearest training sample.

Two distances, over the media tokens only (no boundary tokens, no caption), against a seeded subset of
the training split's samples of the generation's modality:

  * the longest common contiguous token run, and the training sample holding it. A run cannot cross
    from one training sample into the next. Found by binary search on the run length L: a common run
    of length L implies one of every shorter length, and whether one exists is a set intersection of
    the rolling hashes of all L-token windows (polynomial hash mod 2**64, vectorized in numpy). Hashes
    only propose: every reported run is compared token by token, so a hash collision can cost time but
    never inflate a result. Cost per generation: O((T + m) log m) for T subset tokens, m generated.
  * token-overlap Jaccard over token SETS (|A & B| / |A | B| of the distinct IDs; repeats do not
    count), the maximum over the subset, and the sample giving it.

A generation is flagged memorized when its longest run reaches `run_fraction` of its media tokens
(and at least `min_run` tokens, so that very short generations are not flagged by chance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from sharding.format import list_shards
from sharding.reader import Sample, read_shard, sample_modalities
from uti.errors import UTIError
from uti.token_space import TokenSpace

_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse mod 2**64 (window hashes are normalized by it)
_BASE_INV = pow(_BASE, -1, 2 ** 64)


class MemorizationError(UTIError):
    """The training subset cannot be read or is empty."""


@dataclass(frozen=True)
class MemorizationSettings:
    run_fraction: float = 0.5  # memorized: longest common run >= this share of the generation's media tokens
    min_run: int = 8  # ... and at least this many tokens
    max_train: int = 2000  # training samples in the seeded subset
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.run_fraction <= 1:
            raise MemorizationError(f"memorization run_fraction must be in (0, 1], got {self.run_fraction}")
        if self.min_run < 1 or self.max_train < 1:
            raise MemorizationError(f"memorization min_run and max_train must be >= 1, got {self.min_run}, "
                                    f"{self.max_train}")


@dataclass(frozen=True, eq=False)
class TrainingSubset:
    """Media tokens of some training samples, concatenated; sample k is tokens[offsets[k]:offsets[k+1]]."""

    ids: list[str]
    tokens: np.ndarray  # int64
    offsets: np.ndarray  # int64 (n + 1,)
    # Computed once for every query: (sample, token) of each distinct pair (Jaccard), the prefix hashes, and
    # per position the end of its sample (a run may not cross into the next sample).
    _pairs: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False)
    _prefix: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False)
    _end: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = np.repeat(np.arange(len(self.ids), dtype=np.int64), np.diff(self.offsets))
        key = np.unique((owner << 32) | self.tokens.astype(np.int64))
        object.__setattr__(self, "_pairs", (key >> 32, key & 0xFFFFFFFF))
        object.__setattr__(self, "_prefix", _prefix_hashes(self.tokens))
        object.__setattr__(self, "_end", self.offsets[1:][owner])

    @classmethod
    def from_samples(cls, ids: Sequence[str], token_lists: Sequence[np.ndarray]) -> "TrainingSubset":
        lengths = [len(t) for t in token_lists]
        tokens = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_lists]) if token_lists else \
            np.zeros(0, np.int64)
        return cls(ids=list(ids), tokens=tokens, offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, k: int) -> np.ndarray:
        return self.tokens[self.offsets[k]:self.offsets[k + 1]]


@dataclass(frozen=True)
class CommonRun:
    length: int
    query_start: int = -1
    sample: int = -1  # index into the subset (-1: no common token)
    sample_start: int = -1


@dataclass(frozen=True)
class Nearest:
    """One generation's distance to the training subset."""

    label: str  # the generation's name (its prompt's sample ID)
    n_tokens: int
    run: int  # longest common contiguous run, in tokens
    run_share: float  # run / n_tokens
    run_sample_id: str | None
    jaccard: float  # best token-set Jaccard
    jaccard_sample_id: str | None
    memorized: bool


@dataclass(frozen=True)
class MemorizationReport:
    settings: MemorizationSettings
    n_train: int
    nearest: list[Nearest]

    @property
    def memorized(self) -> list[Nearest]:
        return [n for n in self.nearest if n.memorized]

    def summary(self) -> dict:
        """JSON-ready: the settings, the subset size, every generation's nearest sample, the memorized IDs."""
        return {"settings": dataclasses.asdict(self.settings), "n_train": self.n_train,
                "nearest": [dataclasses.asdict(n) for n in self.nearest],
                "memorized": [{"generation": n.label, "training_sample": n.run_sample_id, "run": n.run,
                               "run_share": n.run_share} for n in self.memorized]}


# ---- distances -----------------------------------------------------------------------------------------------
def _prefix_hashes(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G, inverse powers): G[i] = sum_{j<i} (seq[j]+1) * B^j mod 2**64; a window's hash is then
    (G[i+L] - G[i]) * B^-i, the same wherever the window sits. uint64 arithmetic wraps mod 2**64."""
    n = len(seq)
    with np.errstate(over="ignore"):
        powers, inverse = (np.cumprod(np.concatenate([np.ones(1, np.uint64), np.full(max(n - 1, 0), b, np.uint64)]),
                                      dtype=np.uint64)[:n] for b in (_BASE, _BASE_INV))
        terms = (np.asarray(seq, dtype=np.uint64) + np.uint64(1)) * powers
        g = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
    return g, inverse


def _window_hashes(prefix: tuple[np.ndarray, np.ndarray], length: int) -> np.ndarray:
    g, inverse = prefix
    n_windows = len(g) - length
    with np.errstate(over="ignore"):
        return (g[length:] - g[:n_windows]) * inverse[:n_windows]


class _RunFinder:
    """Windows of one query against one subset, hashed once per length tried."""

    def __init__(self, query: np.ndarray, subset: TrainingSubset):
        self.query = np.asarray(query, dtype=np.int64)
        self.subset = subset
        self.q_prefix = _prefix_hashes(self.query)
        self.t_prefix, self.t_end = subset._prefix, subset._end

    def find(self, length: int) -> CommonRun | None:
        """A verified common run of exactly `length` tokens inside one training sample, or None."""
        q_hash = _window_hashes(self.q_prefix, length)
        t_hash = _window_hashes(self.t_prefix, length)
        starts = np.arange(len(t_hash), dtype=np.int64)
        inside = starts + length <= self.t_end[:len(t_hash)]
        q_sorted = np.sort(q_hash)  # the query is small: search it, never sort the subset's windows
        found = q_sorted[np.minimum(np.searchsorted(q_sorted, t_hash), len(q_sorted) - 1)] == t_hash
        hits = starts[inside & found]
        if not len(hits):
            return None
        by_hash: dict[int, list[int]] = {}
        for i, h in enumerate(q_hash.tolist()):
            by_hash.setdefault(h, []).append(i)
        tokens = self.subset.tokens
        for t in hits.tolist():
            for q in by_hash.get(int(t_hash[t]), ()):
                if np.array_equal(self.query[q:q + length], tokens[t:t + length]):  # never trust a hash alone
                    k = int(np.searchsorted(self.subset.offsets, t, side="right")) - 1
                    return CommonRun(length=length, query_start=q, sample=k,
                                     sample_start=t - int(self.subset.offsets[k]))
        return None


def longest_common_run(query: np.ndarray, subset: TrainingSubset) -> CommonRun:
    """The longest contiguous token run the query shares with any one sample of the subset."""
    if not len(query) or not len(subset.tokens):
        return CommonRun(length=0)
    finder = _RunFinder(query, subset)
    best = CommonRun(length=0)
    lo, hi = 0, min(len(query), int(np.diff(subset.offsets).max()))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        run = finder.find(mid)
        if run is None:
            hi = mid - 1
        else:
            lo, best = mid, run
    return best


def jaccard_per_sample(query: np.ndarray, subset: TrainingSubset) -> np.ndarray:
    """Token-set Jaccard of the query with every sample of the subset (float64, one per sample)."""
    owner, token = subset._pairs
    q = np.unique(np.asarray(query, dtype=np.int64))
    n = len(subset)
    inter = np.bincount(owner[np.isin(token, q)], minlength=n).astype(np.float64)
    union = len(q) + np.bincount(owner, minlength=n) - inter
    return np.divide(inter, union, out=np.zeros(n), where=union > 0)


def nearest_training_sample(label: str, query: np.ndarray, subset: TrainingSubset,
                            settings: MemorizationSettings) -> Nearest:
    run = longest_common_run(query, subset)
    jac = jaccard_per_sample(query, subset)
    best = int(np.argmax(jac)) if len(jac) else -1
    n = len(query)
    share = run.length / n if n else 0.0
    return Nearest(label=label, n_tokens=n, run=run.length, run_share=share,
                   run_sample_id=subset.ids[run.sample] if run.sample >= 0 else None,
                   jaccard=float(jac[best]) if best >= 0 else 0.0,
                   jaccard_sample_id=subset.ids[best] if best >= 0 else None,
                   memorized=run.length >= settings.min_run and share >= settings.run_fraction)


def memorization(generations: Sequence[tuple[str, np.ndarray]], subset: TrainingSubset,
                 settings: MemorizationSettings = MemorizationSettings()) -> MemorizationReport:
    """(label, media tokens) per generation -> each one's nearest training sample and the memorized flags."""
    return MemorizationReport(settings=settings, n_train=len(subset),
                              nearest=[nearest_training_sample(label, np.asarray(ids), subset, settings)
                                       for label, ids in generations])


# ---- the training subset ---------------------------------------------------------------------------------------
def iter_split_samples(out: str, split: str, space: TokenSpace, modality: str,
                       keep: dict[str, set[int]] | None = None) -> Iterator[Sample]:
    """Samples of one modality in a split, through the project's validating reader; keep: shard name ->
    positions in that shard to yield (None: all). Shards with nothing to keep are not opened."""
    for ref in list_shards(out, split):
        if keep is not None and not keep.get(ref.name):
            continue
        for sample in read_shard(ref.tar_path, expected_token_space=space, index=ref.index):
            if sample.meta.get("modality") != modality:
                continue
            if keep is None or sample.index_in_shard in keep[ref.name]:
                yield sample


def seeded_positions(out: str, split: str, modality: str, n: int, seed: int) -> dict[str, set[int]]:
    """Up to n samples of `modality` in the split, chosen with the seed from the shard indexes (no tar read
    where the index records modalities): shard name -> positions in the shard."""
    where = [(ref.name, i) for ref in list_shards(out, split)
             for i, m in enumerate(sample_modalities(ref)) if m == modality]
    if not where:
        raise MemorizationError(f"{out}: split {split!r} has no {modality} sample to compare generations with; "
                                "give the split the model trained on (--split)")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(where), size=min(n, len(where)), replace=False)
    keep: dict[str, set[int]] = {}
    for k in chosen.tolist():
        keep.setdefault(where[k][0], set()).add(where[k][1])
    return keep


def read_training_subset(out: str, split: str, space: TokenSpace, modality: str,
                         settings: MemorizationSettings = MemorizationSettings()) -> TrainingSubset:
    """The seeded subset (settings.max_train samples, settings.seed) of the split's `modality` samples."""
    keep = seeded_positions(out, split, modality, settings.max_train, settings.seed)
    samples = list(iter_split_samples(out, split, space, modality, keep))
    return TrainingSubset.from_samples([s.key if not s.meta.get("id") else str(s.meta["id"]) for s in samples],
                                       [s.tokens for s in samples])
