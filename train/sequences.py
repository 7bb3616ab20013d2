"""Task sequences, loss masks and packing: pure functions over token IDs (no torch, no Ray).

Sequence format (every ID from the run's token space; C = one caption's text IDs, A = audio IDs
in the token space's audio layout, I = image IDs row-major; `^` marks the tokens that carry loss):

    a2t   <bos> <a2t> <boa> A <eoa> <bot> C <eot> <eos>        loss on  <bot> C <eot> <eos>
    t2a   <bos> <t2a> <bot> C <eot> <boa> A <eoa> <eos>        loss on  <boa> A <eoa> <eos>
    i2t   <bos> <i2t> <boi> I <eoi> <bot> C <eot> <eos>        loss on  <bot> C <eot> <eos>
    t2i   <bos> <t2i> <bot> C <eot> <boi> I <eoi> <eos>        loss on  <boi> I <eoi> <eos>
    text  <bos> <txt> <bot> C <eot> <eos>                      loss on everything after <bos>

A doc's `targets[i]` says whether token i is predicted (from the tokens before it). `<bos>` is never
a target, so after packing no token is ever predicted from the previous document.

Packing is greedy next-fit: docs are appended to the current row while they fit in `seq_len`; the
next doc that does not fit closes the row (right-padded with `<pad>`, never a target). Position IDs
restart at 0 for every doc (and for the padding), which Hugging Face models turn into a
block-diagonal causal mask when no attention mask is passed: packed docs do not attend to each
other (see train.model.PackedLM).

Overlong docs (longer than `seq_len`) are never cut silently. They are counted, and then
  * `drop`: dropped;
  * `split`: audio tasks (a2t, t2a) are cut into several docs at frame boundaries (multiples of
    the token space's tokens per audio frame: n_q frame-major, 7 for SNAC 24 kHz, 1 for FSQ), each
    with the whole caption; images are dropped (a partial grid cannot be decoded
    or meaningfully predicted), and so is text (an overlong caption also would not fit any task).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from train.config import TASKS
from uti.captions import split_captions as _split_captions
from uti.errors import UTIError
from uti.token_space import TokenSpace

TASK_TAGS: dict[str, str] = {"a2t": "<a2t>", "t2a": "<t2a>", "i2t": "<i2t>", "t2i": "<t2i>", "text": "<txt>"}
TASK_INDEX: dict[str, int] = {t: i for i, t in enumerate(TASKS)}
# Tasks a sample of each modality can serve (it always also needs at least one caption).
VALID_TASKS: dict[str, tuple[str, ...]] = {"audio": ("a2t", "t2a", "text"), "image": ("i2t", "t2i", "text"),
                                           "text": ("text",)}
MEDIA_OF = {"a2t": "audio", "t2a": "audio", "i2t": "image", "t2i": "image", "text": None}
NO_TASK = -1  # task_ids value of padding


class SequenceError(UTIError):
    """A sample cannot be turned into a sequence (inconsistent meta, wrong token count...)."""


@dataclass(frozen=True)
class Specials:
    """The special IDs sequence building needs, read once from the token space."""

    pad: int
    bos: int
    eos: int
    bot: int
    eot: int
    boi: int
    eoi: int
    boa: int
    eoa: int
    tags: Mapping[str, int]
    # Tokens of one audio frame in the token space's layout (TokenSpace.layout): audio is checked and
    # cut in these units. None (no audio codec, or built by hand): the sample's meta n_q, frame-major.
    audio_frame: int | None = None

    @classmethod
    def from_space(cls, space: TokenSpace) -> "Specials":
        s = space.special
        frame = space.layout("audio").tokens_per_frame if space.has_modality("audio") else None
        return cls(pad=s("<pad>"), bos=s("<bos>"), eos=s("<eos>"), bot=s("<bot>"), eot=s("<eot>"),
                   boi=s("<boi>"), eoi=s("<eoi>"), boa=s("<boa>"), eoa=s("<eoa>"),
                   tags={t: s(tag) for t, tag in TASK_TAGS.items()}, audio_frame=frame)


@dataclass(frozen=True, eq=False)
class Doc:
    """One task sequence: IDs, which of them carry loss, and the task it was built for."""

    ids: np.ndarray  # int64 (n,)
    targets: np.ndarray  # bool (n,)
    task: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class SeqStats:
    """Counters of what sequence building did; summed over ranks into the metrics."""

    samples: int = 0
    docs: int = 0
    doc_tokens: int = 0
    overlong: int = 0  # docs longer than seq_len (before drop/split)
    overlong_dropped: int = 0
    overlong_split: int = 0  # overlong docs that were split
    split_pieces: int = 0  # docs produced by splitting
    no_caption: int = 0  # samples skipped: no caption, so no task applies
    no_task: int = 0  # samples skipped: every task valid for the modality has ratio 0
    stray: int = 0  # samples whose meta modality differs from the one the census read (train.stream skips them)
    tasks: Counter = field(default_factory=Counter)  # docs built per task

    FIELDS = ("samples", "docs", "doc_tokens", "overlong", "overlong_dropped", "overlong_split", "split_pieces",
              "no_caption", "no_task", "stray")

    def as_vector(self) -> list[int]:
        return [getattr(self, f) for f in self.FIELDS] + [self.tasks.get(t, 0) for t in TASKS]

    def to_dict(self) -> dict:
        return {**{f: getattr(self, f) for f in self.FIELDS}, "tasks": {t: self.tasks.get(t, 0) for t in TASKS}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "SeqStats":
        return cls(**{f: int(data[f]) for f in cls.FIELDS},
                   tasks=Counter({k: int(v) for k, v in data["tasks"].items()}))

    @staticmethod
    def vector_to_dict(vec: Sequence[int]) -> dict:
        n = len(SeqStats.FIELDS)
        return {**dict(zip(SeqStats.FIELDS, (int(v) for v in vec[:n]))),
                **{f"task_{t}": int(v) for t, v in zip(TASKS, vec[n:])}}


# ---- one doc -------------------------------------------------------------------------------------
def build_doc(task: str, *, media: np.ndarray | None, caption: np.ndarray, sp: Specials) -> Doc:
    """The sequence of one task (see the module doc for the layout and the loss mask)."""
    if task not in TASK_TAGS:
        raise SequenceError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    cap = np.asarray(caption, dtype=np.int64)
    text = [sp.bot, *cap.tolist(), sp.eot]
    kind = MEDIA_OF[task]
    if kind is None:
        ids = [sp.bos, sp.tags[task], *text, sp.eos]
        targets = [False] + [True] * (len(ids) - 1)
    else:
        if media is None or len(media) == 0:
            raise SequenceError(f"task {task} needs {kind} tokens, got none")
        begin, end = (sp.boa, sp.eoa) if kind == "audio" else (sp.boi, sp.eoi)
        med = [begin, *np.asarray(media, dtype=np.int64).tolist(), end]
        if task in ("a2t", "i2t"):  # media is the prompt, the caption is learned
            ids = [sp.bos, sp.tags[task], *med, *text, sp.eos]
            prompt = 2 + len(med)
        else:  # the caption is the prompt, the media is learned
            ids = [sp.bos, sp.tags[task], *text, *med, sp.eos]
            prompt = 2 + len(text)
        targets = [False] * prompt + [True] * (len(ids) - prompt)
    return Doc(ids=np.asarray(ids, dtype=np.int64), targets=np.asarray(targets, dtype=bool), task=task)


def split_captions(text: np.ndarray, lengths: Sequence[int], *, what: str) -> list[np.ndarray]:
    """The concatenated caption IDs of a sample, cut back into its captions (the tokenizer's inverse of
    encode_captions; a mismatch is a SequenceError here)."""
    return _split_captions(text, lengths, what=what, error=SequenceError)


def check_media(modality: str, tokens: np.ndarray, meta: Mapping, *, what: str,
                tokens_per_frame: int | None = None) -> None:
    """Token count must match the meta exactly; a mismatch is a broken shard, never coerced.
    Audio: n_frames * tokens_per_frame (the token space's layout; None: meta n_q, frame-major)."""
    if modality == "audio":
        n_q, n_frames = meta.get("n_q"), meta.get("n_frames")
        per = tokens_per_frame if tokens_per_frame is not None else n_q
        if not isinstance(n_q, int) or not isinstance(n_frames, int) or n_q < 1 or len(tokens) != n_frames * per:
            detail = "" if per == n_q else f" ({per} tokens per frame in the token space's layout)"
            raise SequenceError(f"{what}: {len(tokens)} audio tokens but meta n_frames={n_frames!r} n_q={n_q!r}{detail}")
    elif modality == "image":
        if "n_tokens" in meta:  # a causal1d image codec (SEED): a fixed count, no grid
            n = meta.get("n_tokens")
            if isinstance(n, bool) or not isinstance(n, int) or len(tokens) != n:
                raise SequenceError(f"{what}: {len(tokens)} image tokens but meta n_tokens={n!r}")
            return
        grid = meta.get("grid")
        if not isinstance(grid, (list, tuple)) or len(grid) != 2 or len(tokens) != int(grid[0]) * int(grid[1]):
            raise SequenceError(f"{what}: {len(tokens)} image tokens but meta grid={grid!r}")
    elif modality == "text":
        if len(tokens):
            raise SequenceError(f"{what}: a text-only sample has {len(tokens)} media tokens")
    else:
        raise SequenceError(f"{what}: unknown modality {modality!r}; expected audio, image or text")


def sample_rng(seed: int, epoch: int, sample_id: str) -> np.random.Generator:
    """Per-sample RNG: the task/caption choice depends only on (seed, epoch, sample), not on reading
    order, rank or resume, so a resumed run makes the same choices."""
    key = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), int(epoch), key])


def choose_task(modality: str, mix: Mapping[str, float], rng: np.random.Generator) -> str | None:
    """Pick a task by the mix ratios among those valid for the modality (None if none is)."""
    valid = [t for t in VALID_TASKS.get(modality, ()) if mix.get(t, 0.0) > 0]
    if not valid:
        return None
    p = np.asarray([mix[t] for t in valid], dtype=np.float64)
    return valid[int(rng.choice(len(valid), p=p / p.sum()))]


def sample_to_docs(
    *,
    tokens: np.ndarray,
    text: np.ndarray,
    meta: Mapping,
    sp: Specials,
    mix: Mapping[str, float],
    seq_len: int,
    overlong: str,
    seed: int,
    epoch: int,
    stats: SeqStats,
    task: str | None = None,
) -> list[Doc]:
    """One sample -> 0..n docs (0: skipped or dropped, always counted in `stats`).

    `task`: the task already chosen for this sample (train.stream chooses the task first, from the
    mix); None chooses one here among the tasks the sample's modality allows, by the mix ratios."""
    what = f"sample {meta.get('id')!r}"
    modality = meta.get("modality")
    check_media(str(modality), tokens, meta, what=what, tokens_per_frame=sp.audio_frame)
    if task is not None and task not in VALID_TASKS.get(str(modality), ()):
        raise SequenceError(f"{what}: a {modality} sample cannot serve task {task!r} (it serves "
                            f"{', '.join(VALID_TASKS.get(str(modality), ())) or 'no task'})")
    stats.samples += 1
    captions = [c for c in split_captions(text, meta.get("caption_token_lengths", []), what=what) if len(c)]
    if not captions:
        stats.no_caption += 1
        return []
    rng = sample_rng(seed, epoch, str(meta.get("id")))
    if task is None:
        task = choose_task(str(modality), mix, rng)
    if task is None:
        stats.no_task += 1
        return []
    caption = captions[int(rng.integers(len(captions)))]
    media = None if MEDIA_OF[task] is None else np.asarray(tokens)
    doc = build_doc(task, media=media, caption=caption, sp=sp)
    if len(doc) <= seq_len:
        docs = [doc]
    else:
        stats.overlong += 1
        docs = split_overlong(doc, task=task, media=media, caption=caption, sp=sp, seq_len=seq_len,
                              n_q=sp.audio_frame or meta.get("n_q"), policy=overlong)
        if docs:
            stats.overlong_split += 1
            stats.split_pieces += len(docs)
        else:
            stats.overlong_dropped += 1
    for d in docs:
        stats.docs += 1
        stats.doc_tokens += len(d)
        stats.tasks[task] += 1
    return docs


def split_overlong(doc: Doc, *, task: str, media: np.ndarray | None, caption: np.ndarray, sp: Specials,
                   seq_len: int, n_q: int | None, policy: str) -> list[Doc]:
    """Pieces of an overlong doc that each fit `seq_len`, or [] when it must be dropped.

    Only audio is split, and only at frame boundaries: every piece holds whole frames (`n_q`: the
    tokens of one frame in the token space's layout, n_q levels when frame-major), so every position
    inside `<boa>...<eoa>` still holds the level the layout gives it.
    """
    if policy != "split" or MEDIA_OF[task] != "audio" or media is None or not isinstance(n_q, int) or n_q < 1:
        return []
    overhead = len(doc) - len(media)
    frames_per_piece = (seq_len - overhead) // n_q
    if frames_per_piece < 1:  # the caption alone leaves no room for one frame
        return []
    step = frames_per_piece * n_q
    return [build_doc(task, media=media[i:i + step], caption=caption, sp=sp) for i in range(0, len(media), step)]


# ---- packing -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Row:
    """One packed row of exactly seq_len tokens."""

    input_ids: np.ndarray  # int64 (L,)
    targets: np.ndarray  # bool (L,): token i is predicted from tokens < i
    task_ids: np.ndarray  # int64 (L,): TASK_INDEX of the doc, NO_TASK on padding
    position_ids: np.ndarray  # int64 (L,): restart at 0 per doc (and for the padding)
    n_docs: int

    @property
    def n_pad(self) -> int:
        return int((self.task_ids == NO_TASK).sum())


def pack_row(docs: Sequence[Doc], *, seq_len: int, pad_id: int) -> Row:
    """Concatenate docs (which must fit) and right-pad to seq_len."""
    total = sum(len(d) for d in docs)
    if total > seq_len:
        raise SequenceError(f"pack_row: docs of {total} tokens do not fit seq_len {seq_len} (a packing bug)")
    ids = np.full(seq_len, pad_id, dtype=np.int64)
    targets = np.zeros(seq_len, dtype=bool)
    task_ids = np.full(seq_len, NO_TASK, dtype=np.int64)
    pos = np.zeros(seq_len, dtype=np.int64)
    at = 0
    for d in docs:
        n = len(d)
        ids[at:at + n] = d.ids
        targets[at:at + n] = d.targets
        task_ids[at:at + n] = TASK_INDEX[d.task]
        pos[at:at + n] = np.arange(n)
        at += n
    pos[at:] = np.arange(seq_len - at)
    return Row(input_ids=ids, targets=targets, task_ids=task_ids, position_ids=pos, n_docs=len(docs))


class Packer:
    """Greedy next-fit packing of docs into rows; its pending docs are part of the resume state."""

    def __init__(self, *, seq_len: int, pad_id: int):
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.ready: list[list[Doc]] = []  # closed rows not yet handed out
        self.current: list[Doc] = []
        self._current_len = 0

    def add(self, doc: Doc) -> None:
        if len(doc) > self.seq_len:
            raise SequenceError(f"Packer.add: a doc of {len(doc)} tokens exceeds seq_len {self.seq_len}; "
                                "overlong docs must go through sample_to_docs (counted, dropped or split)")
        if self._current_len + len(doc) > self.seq_len:
            self.ready.append(self.current)
            self.current, self._current_len = [], 0
        self.current.append(doc)
        self._current_len += len(doc)

    def pop_row(self) -> Row | None:
        if not self.ready:
            return None
        return pack_row(self.ready.pop(0), seq_len=self.seq_len, pad_id=self.pad_id)

    def flush(self) -> None:
        """Close the current row even if it is not full (end of data)."""
        if self.current:
            self.ready.append(self.current)
            self.current, self._current_len = [], 0

    def pending_docs(self) -> list[Doc]:
        """Every doc not yet handed out, in order (an elastic resume deals them to the new ranks)."""
        return [d for row in self.ready for d in row] + list(self.current)

    # ---- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        def enc(d: Doc) -> dict:
            return {"ids": d.ids.tolist(), "targets": d.targets.tolist(), "task": d.task}

        return {"seq_len": self.seq_len, "ready": [[enc(d) for d in row] for row in self.ready],
                "current": [enc(d) for d in self.current]}

    def load_state_dict(self, state: Mapping) -> None:
        if int(state["seq_len"]) != self.seq_len:
            raise SequenceError(f"packer state was saved with seq_len {state['seq_len']}, this run uses {self.seq_len}; "
                                "resume with the same --seq-len")

        def dec(d: Mapping) -> Doc:
            return Doc(ids=np.asarray(d["ids"], dtype=np.int64), targets=np.asarray(d["targets"], dtype=bool),
                       task=str(d["task"]))

        self.ready = [[dec(d) for d in row] for row in state["ready"]]
        self.current = [dec(d) for d in state["current"]]
        self._current_len = sum(len(d) for d in self.current)


def collate(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """Rows -> (B, L) arrays: input_ids, targets, task_ids, position_ids."""
    return {
        "input_ids": np.stack([r.input_ids for r in rows]),
        "targets": np.stack([r.targets for r in rows]),
        "task_ids": np.stack([r.task_ids for r in rows]),
        "position_ids": np.stack([r.position_ids for r in rows]),
    }
