"""The named checks of `uti verify`, a failure example (`Finding`) and a check's result.

Check names are part of report.json (dashboards and the tests key on them): add new ones, never
rename. They are a StrEnum, so a misspelt name fails where it is written, and each member is equal to
(and serializes as) its string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Check(StrEnum):
    """The name of each check, as report.json spells it."""

    TOKEN_SPACE = "token_space"
    TOKEN_RANGES = "token_ranges"
    SHAPES = "shapes"
    SHARD_INTEGRITY = "shard_integrity"
    RECONCILIATION = "reconciliation"
    SPLIT_INTEGRITY = "split_integrity"
    DECODE = "decode"
    RETOKENIZE = "retokenize"
    CODEBOOK_HEALTH = "codebook_health"
    LENGTHS = "lengths"
    LOADER = "loader"
    BASELINE = "baseline"


# name -> (the check's number in the report, title, hard by default), one entry per Check in its order
CHECKS: dict[str, tuple[int, str, bool]] = {
    "token_space": (1, "token-space ID equal in token_space.json, job.json, every shard header, index and sample", True),
    "token_ranges": (2, "every ID inside its modality's range, audio IDs on their level (frame-major), uint32", True),
    "shapes": (3, "shape sanity from meta (audio n_frames*n_q, frames vs samples and rates; image grid)", True),
    "shard_integrity": (4, "tar size and SHA-256 equal to the index, counts, keys and IDs as indexed, no orphans", True),
    "reconciliation": (5, "plan rows == samples in shards + rows in errors.jsonl, exactly once, per split", True),
    "split_integrity": (6, "no canonical ID and no source-file SHA-256 in two splits", True),
    "decode": (7, "decode spot checks on a seeded sample: no error, rate/length/size as meta says", True),
    "retokenize": (8, "re-encode the source of a seeded sample and compare the tokens", True),
    "codebook_health": (9, "per-level utilization, perplexity and dead codes over the whole dataset", False),
    "lengths": (10, "length statistics per modality and truncation risk against --max-seq-len", False),
    "loader": (11, "data-loader smoke test through the training reader", True),
    "baseline": (12, "regression limits against a stored baseline", True),
}


@dataclass(frozen=True)
class Finding:
    """One failure example: where (shard `split/name`, sample key and canonical ID) and what."""

    check: str
    shard: str | None
    key: str | None
    id: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "key": self.key, "id": self.id, "detail": self.detail}


@dataclass
class CheckResult:
    name: str
    ok: bool
    hard: bool
    skipped: bool = False
    failures: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    examples: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def status(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.ok:
            return "WARN" if self.warnings else "PASS"
        return "FAIL" if self.hard else "WARN"

    @property
    def first_failure(self) -> Finding | None:
        return self.examples[0] if self.examples else None

    def to_dict(self) -> dict[str, Any]:
        number, title, _ = CHECKS[self.name]
        first = self.first_failure
        return {
            "name": self.name, "number": number, "title": title, "status": self.status,
            "ok": self.ok, "hard": self.hard, "skipped": self.skipped, "failures": self.failures,
            "counts": self.counts, "first_failure": first.to_dict() if first else None,
            "examples": [f.to_dict() for f in self.examples], "warnings": list(self.warnings), "note": self.note,
        }


class FindingLog:
    """Failures per check: complete counts, the first `max_examples` examples each (bounded memory)."""

    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[Finding]] = {}

    def add(self, check: str, detail: str, *, shard: str | None = None, key: str | None = None,
            id: str | None = None) -> None:
        if check not in CHECKS:
            raise KeyError(f"unknown check {check!r}")
        self.counts[check] = self.counts.get(check, 0) + 1
        kept = self.examples.setdefault(check, [])
        if len(kept) < self.max_examples:
            kept.append(Finding(check, shard, key, id, detail))

    def merge(self, other: "FindingLog") -> None:
        """Add another log. Examples stay ordered by shard (a stable sort keeps each shard's own order),
        so the kept examples and the first failure do not depend on which Ray task finished first."""
        for check, n in other.counts.items():
            self.counts[check] = self.counts.get(check, 0) + n
            both = self.examples.get(check, []) + other.examples.get(check, [])
            both.sort(key=lambda f: f.shard or "")
            self.examples[check] = both[: self.max_examples]

    def failed(self, check: str) -> bool:
        return self.counts.get(check, 0) > 0
