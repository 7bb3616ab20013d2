"""Held-out loss per task: every eligible sample of a split scored on every task its modality serves.

A sample gives one doc per task (train.sequences.build_doc, its first non-empty caption), so each
sample weighs the same and the docs of the ablations (train.evaluate.ablation) pair up with these
one for one. A doc's loss is its mean nats per target token, computed by train.model.token_losses,
the function training and its validation use. The task's value, the mean over samples with a bootstrap
interval over samples, is computed from pooled per-sample losses (train.evaluate.scoring).

Docs are scored one per row (right-padded with <pad>, never a target), so a doc's loss is its own
and needs no unpacking; docs are sorted by length so a batch pads little.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sharding.reader import ShardReader
from train.census import resolve_split
from train.model import PackedLM, token_losses
from train.sequences import (
    MEDIA_OF, VALID_TASKS, Doc, Specials, build_doc, check_media, collate, pack_row, split_captions,
)
from uti.token_space import TokenSpace


@dataclass(frozen=True, eq=False)
class EvalSample:
    """What scoring needs of one stored sample: its media IDs (empty for text) and one caption."""

    id: str
    modality: str
    media: np.ndarray  # int64 global IDs
    caption: np.ndarray  # int64 global IDs of its first non-empty caption

    def tasks(self) -> tuple[str, ...]:
        return VALID_TASKS.get(self.modality, ())

    def doc(self, task: str, sp: Specials) -> Doc:
        return build_doc(task, media=self.media if MEDIA_OF[task] else None, caption=self.caption, sp=sp)


@dataclass(frozen=True)
class DocLoss:
    """Summed nats over a doc's target tokens, and their count."""

    nats: float
    tokens: int

    @property
    def mean(self) -> float:
        return self.nats / self.tokens


@dataclass(frozen=True)
class TaskLoss:
    """A task's held-out loss: mean over samples of each sample's nats per target token."""

    task: str
    mean: float
    low: float
    high: float
    n_samples: int
    n_tokens: int

    def to_dict(self) -> dict:
        return {"task": self.task, "mean": self.mean, "low": self.low, "high": self.high,
                "n_samples": self.n_samples, "n_tokens": self.n_tokens}


@dataclass(frozen=True)
class SplitSamples:
    """The samples read from one split of the inputs, and those left out with the reason."""

    samples: list[EvalSample]
    no_caption: list[str]  # sample IDs without a non-empty caption: no task applies
    captioned: int = 0  # captioned samples in the split (more than len(samples) when a limit chose some)


def read_samples(outs: Sequence[str | Path], split: str, space: TokenSpace, *, limit: int | None = None,
                 seed: int = 0) -> SplitSamples:
    """The captioned samples of `split` (or its alias, train.census.resolve_split) of each OUT, in reader
    order: all of them, or a seeded uniform choice of `limit` (reservoir sampling: memory holds `limit`
    samples whatever the split's size). The reader refuses a shard of another token space, naming it."""
    sp = Specials.from_space(space)
    rng = np.random.default_rng([seed, 2])
    kept: list[tuple[int, EvalSample]] = []  # (reader position, sample)
    no_caption, seen = [], 0
    for out in outs:
        for s in ShardReader(str(out), expected_token_space=space.id, split=resolve_split(str(out), split)):
            sample = _eval_sample(s, out, sp)
            if sample is None:
                no_caption.append(str(s.meta.get("id")))
                continue
            if limit is None or len(kept) < limit:
                kept.append((seen, sample))
            else:
                j = int(rng.integers(0, seen + 1))
                if j < limit:
                    kept[j] = (seen, sample)
            seen += 1
    return SplitSamples(samples=[s for _, s in sorted(kept, key=lambda k: k[0])], no_caption=no_caption,
                        captioned=seen)


def _eval_sample(s, out: str | Path, sp: Specials) -> EvalSample | None:
    sid, modality = str(s.meta.get("id")), str(s.meta.get("modality"))
    what = f"{out}: sample {sid!r} (shard {s.shard})"
    check_media(modality, s.tokens, s.meta, what=what, tokens_per_frame=sp.audio_frame)
    captions = [c for c in split_captions(s.text, s.meta.get("caption_token_lengths", []), what=what) if len(c)]
    if not captions:
        return None
    return EvalSample(id=sid, modality=modality, media=np.asarray(s.tokens, dtype=np.int64),
                      caption=np.asarray(captions[0], dtype=np.int64))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def doc_losses(model: PackedLM, docs: Sequence[Doc], *, vocab_size: int, pad_id: int,
               batch_tokens: int = 8192) -> list[DocLoss]:
    """Each doc's summed target loss (same order as `docs`), one doc per row, batches of about
    `batch_tokens` padded tokens."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    out: list[DocLoss | None] = [None] * len(docs)
    start = 0
    while start < len(order):
        width = len(docs[order[start]])
        end = start + 1
        while end < len(order) and len(docs[order[end]]) * (end - start + 1) <= max(batch_tokens, width):
            end += 1
        chunk = order[start:end]
        for i, loss in zip(chunk, _batch_losses(model, [docs[i] for i in chunk], vocab_size=vocab_size,
                                                pad_id=pad_id, device=device)):
            out[i] = loss
        start = end
    model.train(was_training)
    return out  # type: ignore[return-value]


def _batch_losses(model: PackedLM, docs: Sequence[Doc], *, vocab_size: int, pad_id: int,
                  device: torch.device) -> list[DocLoss]:
    width = max(len(d) for d in docs)
    batch = collate([pack_row([d], seq_len=width, pad_id=pad_id) for d in docs])
    ce, mask = token_losses(model, torch.as_tensor(batch["input_ids"], device=device),
                            torch.as_tensor(batch["position_ids"], device=device),
                            torch.as_tensor(batch["targets"], device=device), vocab_size)
    row_of = mask.nonzero()[:, 0]  # losses come row-major: the row of each
    nats = torch.bincount(row_of, weights=ce.double(), minlength=len(docs)).tolist()
    tokens = torch.bincount(row_of, minlength=len(docs)).tolist()
    return [DocLoss(nats=float(n), tokens=int(t)) for n, t in zip(nats, tokens)]


def task_samples(samples: Sequence[EvalSample], task: str, *, max_len: int | None, sp: Specials) -> list[EvalSample]:
    """The samples that serve `task` and whose doc fits `max_len` (None: any length)."""
    return [s for s in samples if task in s.tasks() and (max_len is None or len(s.doc(task, sp)) <= max_len)]


def load_eval_model(checkpoint: str | Path, *, device: torch.device | None = None) -> tuple[PackedLM, TokenSpace, Path]:
    """A run folder's latest complete checkpoint (or one checkpoints/step-N folder) as `uti generate`
    loads it, wrapped for token_losses; with its token space and folder."""
    from train.checkpoint import checkpoint_space, load_tensors
    from train.generate import resolve_checkpoint
    from train.model import model_from_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, load_tensors(ckpt / "model.pt"))
    return PackedLM(model).to(device or torch.device("cpu")).eval(), checkpoint_space(ckpt), ckpt
