"""TrainConfig: every knob of `uti train`, as one keyword-only strict dataclass.

The CLI parses flags into this; the driver serializes it (RUN/run_config.json) and ships it to the
Ray Train workers as a plain dict, which they rebuild with `uti.strict.from_dict` so a typo or a
stale key can never fall back silently to a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from uti.errors import ConfigError, UTIError
from uti.strict import from_dict, to_dict

TASKS: tuple[str, ...] = ("a2t", "t2a", "i2t", "t2i", "text")
DEFAULT_MIX: dict[str, float] = {"a2t": 0.3, "t2a": 0.25, "i2t": 0.15, "t2i": 0.15, "text": 0.15}
OVERLONG_POLICIES = ("drop", "split")
MIX_BY = ("samples", "tokens")  # what --data-weights are proportions of
DEFAULT_SHUFFLE_BUFFER = 128  # samples per (input, modality) stream and rank (checkpoints keep their positions)


class TrainError(UTIError):
    """Training cannot start or continue; the message names the file/step and the fix."""


class TrainInterrupted(TrainError):
    """Ctrl-C (or SIGTERM) stopped a run: `checkpoint_step` is the step `--resume` continues from (None: no
    checkpoint yet); `signum` is the signal, so the exit code is 128 + signum like any interrupted command."""

    def __init__(self, message: str, *, run: str, checkpoint_step: int | None, signum: int = 2):
        super().__init__(message)
        self.run = run
        self.checkpoint_step = checkpoint_step
        self.signum = signum


# The TrainConfig fields `uti train` sets from a flag of the same name (--num-workers -> num_workers):
# error messages name the flag, which is what the user typed.
FLAG_FIELDS: tuple[str, ...] = (
    "data", "out", "model", "num_workers", "use_gpu", "steps", "seq_len", "batch_size", "lr", "mix", "split",
    "trainable_rows", "resume", "fsdp", "overlong", "checkpoint_every", "allow_token_space_mismatch", "address",
    "seed", "wait_for_resources", "data_weights", "mix_by", "shuffle_buffer", "eval_split", "eval_every",
    "eval_batches",
)


def flag(name: str) -> str:
    """How the user names a TrainConfig field: its flag (`--seq-len`), else the config key (`train.grad_clip`)."""
    return "--" + name.replace("_", "-") if name in FLAG_FIELDS else f"train.{name}"


def is_url(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute against the current folder (the driver's); URLs unchanged."""
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # tokenized dataset folders (OUT of `uti tokenize`)
    out: str  # run folder (RUN)
    model: str = "tiny"  # "tiny" or a local Hugging Face causal-LM directory
    num_workers: int = 2  # Ray Train workers (one process each; DDP/FSDP ranks); 0: the loop runs in this process
    #                       without Ray (Ray Train's local mode: debugging, quick runs on one machine)
    use_gpu: bool = False
    steps: int = 300  # total optimizer steps of the schedule (a resumed run continues up to it)
    seq_len: int = 512  # packed row length in tokens
    batch_size: int = 4  # packed rows per worker per step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    split: str = "train"  # one split name for all inputs, or one per --data in order ("development,train")
    trainable_rows: bool = False
    resume: bool = False
    fsdp: bool = False
    overlong: str = "drop"  # "drop" or "split" (audio at frame boundaries; images/text are dropped)
    checkpoint_every: int = 0  # 0: only at the last step
    allow_token_space_mismatch: bool = False
    address: str | None = None  # Ray cluster address; None starts a local Ray bound to 127.0.0.1
    wait_for_resources: bool = False  # wait (saying for what) when the cluster lacks the workers' CPUs/GPUs
    seed: int = 0
    eval_texts: int = 16  # held-out captions for the text-only loss (drift) before/after training
    name: str | None = None  # Ray Train run name (default: the run folder's name)
    data_weights: tuple[float, ...] | None = None  # one per --data, in order; None: inputs take turns
    mix_by: str = "samples"  # --data-weights are proportions of "samples" or of "tokens" (media + captions)
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER  # samples per (input, modality) stream and rank
    eval_split: str | None = None  # held-out split(s) for the evaluation loss (like --split); None: no evaluation
    eval_every: int = 0  # evaluate every N steps (and at the last step); 0: at the last step only
    eval_batches: int = 4  # batches per rank per evaluation (the same batches every time)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # a single path is a common slip in Python callers
            object.__setattr__(self, "data", (self.data,))
        if not self.data:
            raise ConfigError("--data: give at least one tokenized dataset folder (--data OUT)")
        if not self.out:
            raise ConfigError("--out: give the run folder (--out RUN)")
        for name in ("steps", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)}: must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"--num-workers: must be >= 0 (0 trains in this process without Ray), got {self.num_workers}")
        if self.num_workers == 0 and (self.address or self.wait_for_resources):
            given = "--address" if self.address else "--wait-for-resources"
            raise ConfigError(f"--num-workers 0 trains in this process without Ray, so {given} has nothing to do: "
                              f"drop {given}, or give --num-workers N to train on N Ray workers")
        for name in ("warmup_steps", "checkpoint_every", "eval_texts", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag(name)}: must be >= 0, got {getattr(self, name)}")
        if self.seq_len < 16:
            raise ConfigError(f"--seq-len: {self.seq_len} is too short for any task sequence; use >= 16")
        if not self.lr > 0:
            raise ConfigError(f"--lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
        if self.overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"--overlong: {self.overlong!r} is not one of {', '.join(OVERLONG_POLICIES)}")
        check_mix(self.mix)
        split_names(self.split)
        check_data_weights(self.data_weights, len(self.data))
        if self.mix_by not in MIX_BY:
            raise ConfigError(f"--mix-by: {self.mix_by!r} is not one of {', '.join(MIX_BY)}")
        if self.eval_split is not None:
            split_names(self.eval_split)
        elif self.eval_every:
            raise ConfigError("--eval-every: give the held-out split to evaluate on with --eval-split (e.g. val)")
        if self.eval_every < 0 or self.eval_batches < 1:
            raise ConfigError(f"--eval-every must be >= 0 and --eval-batches >= 1, got {self.eval_every} and "
                              f"{self.eval_batches}")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"--shuffle-buffer: must be >= 1 (1 = no shuffling within shards), got {self.shuffle_buffer}")
        if self.fsdp and self.trainable_rows:
            raise ConfigError(
                "--fsdp with --trainable-rows is not supported (row masks need whole, unsharded "
                "embedding matrices); use DDP (drop --fsdp) for trainable-rows runs"
            )

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "train config") -> "TrainConfig":
        return from_dict(cls, dict(data), where=where)

    def resolved(self) -> "TrainConfig":
        """The same config with every local path absolute against the current folder. Runs on the
        driver: Ray workers start in other folders, so a relative `--model llama_tiny` or `--data tok`
        would name something else (or nothing) there. `--model tiny` is a name, not a path."""
        model = self.model if self.model == "tiny" else absolute(self.model)
        return dataclasses.replace(self, data=tuple(absolute(d) for d in self.data), out=absolute(self.out), model=model)

    @property
    def run_name(self) -> str:
        return self.name or os.path.basename(os.path.abspath(self.out).rstrip("/")) or "uti-train"


def split_names(split: str) -> list[str]:
    """--split as a list of names: "train" or "development,train" (one per --data, in order)."""
    names = [n.strip() for n in str(split).split(",")]
    if not split or not all(names):
        raise ConfigError(f"--split: {split!r} has an empty name; give one split name, or one per --data separated "
                          "by commas (--split development,train)")
    return names


def check_data_weights(weights: tuple[float, ...] | None, n_inputs: int) -> None:
    if weights is None:
        return
    if len(weights) != n_inputs:
        raise ConfigError(f"--data-weights: {len(weights)} weight(s) for {n_inputs} --data input(s); give one per "
                          "--data, in the same order (--data-weights 0.7,0.3)")
    if any(isinstance(w, bool) or not w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"--data-weights: weights must be numbers >= 0, at least one > 0; got "
                          f"{','.join(str(w) for w in weights)}")


def parse_weights(text: str) -> tuple[float, ...]:
    """'0.7,0.3' -> (0.7, 0.3) (checked against the number of --data in TrainConfig)."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--data-weights: {text!r} is not comma-separated numbers (example: 0.7,0.3)") from None


def check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ConfigError(f"--mix: unknown task(s) {unknown}; tasks are {', '.join(TASKS)}")
    bad = {k: v for k, v in mix.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
    if bad:
        raise ConfigError(f"--mix: ratios must be numbers >= 0, got {bad}")
    if not any(v > 0 for v in mix.values()):
        raise ConfigError("--mix: at least one task needs a ratio > 0")
    return {k: float(v) for k, v in mix.items()}


def parse_mix(text: str) -> dict[str, float]:
    """'a2t=0.4,t2a=0.3,text=0.1' -> {'a2t': 0.4, ...}; tasks left out get ratio 0."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--mix: {part!r} is not TASK=RATIO (example: a2t=0.4,t2a=0.3,i2t=0.2,text=0.1)")
        name = name.strip()
        if name in out:  # a second value would silently replace the first
            raise ConfigError(f"--mix: task {name!r} is given twice ({text!r}); give each task once")
        try:
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--mix: ratio {value!r} of {name!r} is not a number") from None
    return check_mix(out)
