"""The configuration of one `uti verify` run, as typed keyword-only dataclasses.

Built from CLI flags (or a dict) with `uti.strict.from_dict`, so a misspelt key is an error that
names the allowed keys instead of a silent default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from uti.errors import ConfigError
from uti.strict import from_dict, to_dict


@dataclass(kw_only=True, frozen=True)
class BaselineLimits:
    """How far a metric may move against the baseline before the `baseline` check fails.

    Sample counts (total, per split, per modality) are gated one way by default: a dataset that grew
    (new rows, a new split) passes, one that lost more than `sample_count_rel_drop` of a count fails.
    """

    utilization_rel_drop: float = 0.10  # per codebook level, relative to the baseline's utilization
    error_rate_pp: float = 0.5  # absolute increase of the per-row error rate, in percentage points
    sample_count_rel_drop: float = 0.0  # share of a count that may be lost (--baseline-tolerance)
    sample_count_rel_growth: float | None = None  # share a count may grow by; None: growth never fails
    sample_count_rel_change: float | None = None  # the older two-sided limit: sets both of the above
    mean_length_rel_change: float = 0.10  # mean tokens per sample, per modality

    def __post_init__(self) -> None:
        for name in ("utilization_rel_drop", "error_rate_pp", "sample_count_rel_drop", "sample_count_rel_growth",
                     "sample_count_rel_change", "mean_length_rel_change"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"baseline_limits.{name}: must be a finite number >= 0, got {value!r}")
        if self.sample_count_rel_change is not None and (self.sample_count_rel_drop != 0.0
                                                         or self.sample_count_rel_growth is not None):
            raise ConfigError("baseline_limits.sample_count_rel_change sets both directions; give it or "
                              "baseline_limits.sample_count_rel_drop / baseline_limits.sample_count_rel_growth, not both")

    @property
    def count_drop(self) -> float:
        """The share of a sample count that may be lost."""
        return self.sample_count_rel_change if self.sample_count_rel_change is not None else self.sample_count_rel_drop

    @property
    def count_growth(self) -> float | None:
        """The share a sample count may grow by; None: any growth passes."""
        return self.sample_count_rel_change if self.sample_count_rel_change is not None else self.sample_count_rel_growth


@dataclass(kw_only=True, frozen=True)
class VerifyConfig:
    out: str  # the tokenized dataset (OUT of `uti tokenize`): local path or fsspec URL
    address: str | None = None  # Ray cluster address; None starts a local instance
    num_cpus: int | None = None  # CPUs of the local instance (None: all)
    token_space: str | None = None  # expected token_space.json (or its directory); None: the dataset's own
    decode_fraction: float = 0.01
    retokenize_fraction: float = 0.001
    seed: int = 0
    max_seq_len: int | None = None  # truncation risk is measured only against a given length
    fail_on_truncation: bool = False  # makes the `lengths` check hard
    loader_batches: int = 4
    loader_batch_size: int = 8
    baseline: str | None = None
    write_baseline: str | None = None
    report_dir: str | None = None  # default OUT/verify
    utilization_warn: float = 0.30  # the `codebook_health` warning threshold
    baseline_limits: BaselineLimits = field(default_factory=BaselineLimits)
    max_retries: int = 2  # Ray task retries on worker/node failure
    max_examples: int = 20  # failure examples kept per check (counts are always complete)
    codec_batch: int = 256  # sampled items per codec task: each task pays the codec load once
    max_codec_tasks: int = 8
    device: str = "cpu"  # device of the codec tasks (decode / retokenize)
    # Run the codec checks with codecs that differ from the dataset's token space (other weights);
    # every difference is listed in report.json "overrides".
    allow_token_space_mismatch: bool = False
    max_member_bytes: int = 256 * 1024 * 1024  # tar members above this are refused unread
    # Retokenize of shards made with other numerics than verify's (GPU shards checked on CPU nodes, media
    # prepared on the device, no policy recorded): the share of equal codes that passes. In float32 with
    # TF32 off another device's kernels flip only codes at near-ties; level 0 stays near 1, deep RVQ levels
    # drift more (a flipped code changes the residual of every later level), and the one published figure
    # (sglang-omni#749, two batch shapes on an H100) kept 0.86 of codes. Wrong tokens agree near
    # 1/codebook_size and bf16 flips about two thirds of codes, so 0.80 keeps both far below the line.
    # docs/verify.md; a guess until bench_gpu measures CPU against GPU codes.
    cross_device_agreement: float = 0.80
    plots: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError("out: the dataset folder is required")
        for name in ("decode_fraction", "retokenize_fraction", "utilization_warn", "cross_device_agreement"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ConfigError(f"{name}: must be in [0, 1], got {value!r}")
        for name in ("loader_batches", "max_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ("loader_batch_size", "max_examples", "codec_batch", "max_codec_tasks", "max_member_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len: must be >= 1, got {self.max_seq_len!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus: must be >= 1, got {self.num_cpus!r}")
        if self.fail_on_truncation and self.max_seq_len is None:
            raise ConfigError("fail_on_truncation needs max_seq_len: the length to measure sequences against")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("num_cpus applies to a local Ray instance only; drop it when giving an address")

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "verify config") -> "VerifyConfig":
        return from_dict(cls, data, where=where)

    def to_dict(self) -> dict:
        return to_dict(self)
