"""TrainConfig: every knob of `uti train`, as one keyword-only strict dataclass.

The CLI parses flags into this; the driver serializes it (RUN/run_config.json) and ships it to the
Ray Train workers as a plain dict, which they rebuild with `uti.strict.from_dict` so a typo or a
stale key can never fall back silently to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from uti.errors import ConfigError, UTIError
from uti.strict import from_dict, to_dict

TASKS: tuple[str, ...] = ("a2t", "t2a", "i2t", "t2i", "text")
DEFAULT_MIX: dict[str, float] = {"a2t": 0.3, "t2a": 0.25, "i2t": 0.15, "t2i": 0.15, "text": 0.15}
OVERLONG_POLICIES = ("drop", "split")


class TrainError(UTIError):
    """Training cannot start or continue; the message names the file/step and the fix."""


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # tokenized dataset folders (OUT of `uti tokenize`)
    out: str  # run folder (RUN)
    model: str = "tiny"  # "tiny" or a local Hugging Face causal-LM directory
    num_workers: int = 2  # Ray Train workers (one process each; DDP/FSDP ranks)
    use_gpu: bool = False
    steps: int = 300  # total optimizer steps of the schedule (a resumed run continues up to it)
    seq_len: int = 512  # packed row length in tokens
    batch_size: int = 4  # packed rows per worker per step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    split: str = "train"
    trainable_rows: bool = False
    resume: bool = False
    fsdp: bool = False
    overlong: str = "drop"  # "drop" or "split" (audio at frame boundaries; images/text are dropped)
    checkpoint_every: int = 0  # 0: only at the last step
    allow_token_space_mismatch: bool = False
    address: str | None = None  # Ray cluster address; None starts a local Ray bound to 127.0.0.1
    seed: int = 0
    eval_texts: int = 16  # held-out captions for the text-only loss (drift) before/after training
    name: str | None = None  # Ray Train run name (default: the run folder's name)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # a single path is a common slip in Python callers
            object.__setattr__(self, "data", (self.data,))
        if not self.data:
            raise ConfigError("train.data: give at least one tokenized dataset folder (--data OUT)")
        if not self.out:
            raise ConfigError("train.out: give the run folder (--out RUN)")
        for name in ("num_workers", "steps", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "eval_texts", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.seq_len < 16:
            raise ConfigError(f"train.seq_len: {self.seq_len} is too short for any task sequence; use >= 16")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("train.lr must be > 0, weight_decay and grad_clip >= 0")
        if self.overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"train.overlong: {self.overlong!r} is not one of {', '.join(OVERLONG_POLICIES)}")
        check_mix(self.mix)
        if self.fsdp and self.trainable_rows:
            raise ConfigError(
                "train: --fsdp with --trainable-rows is not supported (row masks need whole, unsharded "
                "embedding matrices); use DDP (drop --fsdp) for trainable-rows runs"
            )

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "train config") -> "TrainConfig":
        return from_dict(cls, dict(data), where=where)

    @property
    def run_name(self) -> str:
        return self.name or os.path.basename(os.path.abspath(self.out).rstrip("/")) or "uti-train"


def check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ConfigError(f"train.mix: unknown task(s) {unknown}; tasks are {', '.join(TASKS)}")
    bad = {k: v for k, v in mix.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
    if bad:
        raise ConfigError(f"train.mix: ratios must be numbers >= 0, got {bad}")
    if not any(v > 0 for v in mix.values()):
        raise ConfigError("train.mix: at least one task needs a ratio > 0")
    return {k: float(v) for k, v in mix.items()}


def parse_mix(text: str) -> dict[str, float]:
    """'a2t=0.4,t2a=0.3,text=0.1' -> {'a2t': 0.4, ...}; tasks left out get ratio 0."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--mix: {part!r} is not TASK=RATIO (example: a2t=0.4,t2a=0.3,i2t=0.2,text=0.1)")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--mix: ratio {value!r} of {name!r} is not a number") from None
    return check_mix(out)
