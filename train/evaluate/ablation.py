"""Conditional dependence by prompt ablation: does the model use its prompt?

For each conditional task and each sample, the target's loss (nats per target token) is measured
given (a) its own prompt, (b) the prompt of another sample of the split, chosen by a seeded
derangement (no sample keeps its own), (c) an empty prompt (task tag and boundary tokens only).
A model that reads its prompt does worse with another's: the conditioning gap loss(b) - loss(a) is
positive, and its paired bootstrap interval excludes 0. An interval that includes 0 is flagged
"does not use its prompt" (unconditional memorization looks exactly like that). (c) - (a) says how
much the model leans on the prompt at all.

Retrieval accuracy: the share of samples whose own prompt gives the target the lowest loss among K
prompts (its own and K-1 seeded others); chance is 1/K. Ties (identical prompts) share the credit,
so a model that ignores its prompt scores chance, not 1.

Prompts and targets follow train.sequences.build_doc: t2a/t2i read the caption and learn the media,
a2t/i2t the reverse. An ablated doc is the target's own doc with the interior of its prompt segment
(between <bot>/<eot>, <boa>/<eoa> or <boi>/<eoi>) replaced (`with_prompt`), so targets, boundaries
and loss mask stay exactly as training laid them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.evaluate.stats import Interval
from train.sequences import Doc, SequenceError, Specials

CONDITIONAL_TASKS = ("a2t", "t2a", "i2t", "t2i")
DEFAULT_K = 10
NO_PROMPT_USE = "does not use its prompt"
_TIE = 1e-6  # nats per token: closer losses are a tie (identical prompts differ only by float noise)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2): uniform by rejection."""
    if n < 2:
        raise ValueError(f"derangement: need at least 2 samples to give each another's prompt, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def prompt_bounds(doc: Doc, sp: Specials) -> tuple[int, int]:
    """[start, end) of the prompt's interior in a conditional doc: after its opening boundary token,
    before its closing one (the layout `<bos> <tag> <open> PROMPT <close> TARGET... <eos>`)."""
    first_target = int(np.argmax(doc.targets))
    pairs = {(sp.bot, sp.eot), (sp.boa, sp.eoa), (sp.boi, sp.eoi)}
    if not doc.targets.any() or first_target < 4 or (int(doc.ids[2]), int(doc.ids[first_target - 1])) not in pairs:
        raise SequenceError(f"a {doc.task} doc without a bounded prompt before its targets; only the conditional "
                            f"tasks {', '.join(CONDITIONAL_TASKS)} can be ablated")
    return 3, first_target - 1


def with_prompt(doc: Doc, content: np.ndarray, sp: Specials) -> Doc:
    """`doc` with its prompt's interior replaced by `content` (empty: the empty prompt)."""
    start, end = prompt_bounds(doc, sp)
    content = np.asarray(content, dtype=np.int64)
    ids = np.concatenate([doc.ids[:start], content, doc.ids[end:]])
    targets = np.concatenate([np.zeros(start + len(content), dtype=bool), doc.targets[end:]])
    return Doc(ids=ids, targets=targets, task=doc.task)


def prompt_of(doc: Doc, sp: Specials) -> np.ndarray:
    start, end = prompt_bounds(doc, sp)
    return doc.ids[start:end]


@dataclass(frozen=True)
class Retrieval:
    """Share of samples whose own prompt ranks first among `k` prompts; chance is 1/k."""

    accuracy: float
    k: int
    chance: float
    note: str | None  # set when k is below the requested K (the split has fewer samples)


@dataclass(frozen=True)
class Dependence:
    """One task's prompt ablation: per-condition losses, the gaps (paired), the verdict, retrieval."""

    task: str
    own: Interval  # (a)
    other: Interval  # (b)
    empty: Interval  # (c)
    gap: Interval  # (b) - (a), paired
    empty_gap: Interval  # (c) - (a), paired
    uses_prompt: bool
    flag: str | None  # NO_PROMPT_USE when the gap's interval includes 0
    retrieval: Retrieval


def retrieval_candidates(n: int, k: int, seed: int) -> np.ndarray:
    """(n, k) prompt indices per target: column 0 itself, then k-1 seeded distinct others."""
    rng = np.random.default_rng([seed, 1])
    rows = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        rows.append(np.concatenate([[i], rng.choice(others, size=k - 1, replace=False)]))
    return np.asarray(rows, dtype=np.int64).reshape(n, k)


def retrieval_credit(own: float, others: np.ndarray) -> float:
    """1 when the own prompt's loss is lowest, 1/(1+t) when t others tie with it, 0 when one is lower."""
    if np.any(others < own - _TIE):
        return 0.0
    return 1.0 / (1 + int(np.sum(np.abs(others - own) <= _TIE)))
