"""`uti eval`'s settings: one dataclass the CLI fills and library callers (the demo, tests) build directly."""

from __future__ import annotations

from dataclasses import dataclass, field

from train.evaluate.ablation import DEFAULT_K
from train.evaluate.collapse import CollapseSettings
from train.evaluate.generation import GenerationSettings
from train.evaluate.memorization import MemorizationSettings
from uti.errors import UTIError

DEFAULT_MAX_SAMPLES = 1000  # each is scored ~K+2 times per task: enough for intervals of a few hundredths
DEFAULT_MAX_TEXT_DRIFT = 0.1  # nats per token the text-only loss may rise over the base model before a warning


class EvalError(UTIError):
    """`uti eval` cannot run as asked (a checkpoint and data that differ, a split without samples, bad flags)."""


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str  # a run folder (its latest complete checkpoint) or one checkpoints/step-N folder
    data: tuple[str, ...]  # tokenized dataset folders (OUT of `uti tokenize`), the same token space
    out: str  # EVAL folder: report.json, report.html, generated/
    split: str = "val"  # the held-out split (aliases as `uti train --split`: val finds validation)
    num_workers: int = 2  # Ray tasks per stage, each on its share of the split; 0: everything in this process
    address: str | None = None  # Ray cluster address; None starts a local Ray bound to 127.0.0.1
    seed: int = 0  # derangement, retrieval candidates, prompts, bootstrap
    max_samples: int | None = DEFAULT_MAX_SAMPLES  # a seeded choice of the split's samples; None: all of them
    k: int = DEFAULT_K  # prompts per target for retrieval accuracy
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    memorization: MemorizationSettings = field(default_factory=MemorizationSettings)
    collapse: CollapseSettings = field(default_factory=CollapseSettings)
    train_split: str | None = None  # the split memorization compares with; None: the run's training split
    base_model: str | None = None  # the pretrained LM the run started from (text-only regression)
    max_text_drift: float = DEFAULT_MAX_TEXT_DRIFT
    baseline: str | None = None  # gate on this file (uti.eval_baseline)
    write_baseline: str | None = None  # write this run's metrics as a baseline
    plots: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        if not self.data:
            raise EvalError("uti eval needs at least one --data OUT")
        if self.num_workers < 0:
            raise EvalError(f"--num-workers must be >= 0 (0: in this process), got {self.num_workers}")
        if self.max_samples is not None and self.max_samples < 2:
            raise EvalError(f"--max-samples must be >= 2 (an ablation needs another sample's prompt), got "
                            f"{self.max_samples}")
        if self.k < 2:
            raise EvalError(f"--k must be >= 2 (the own prompt and at least one other), got {self.k}")
        if self.max_text_drift < 0:
            raise EvalError(f"--max-text-drift must be >= 0, got {self.max_text_drift}")
