"""What the shard indexes say about a training input, before any tar is read: which split each
`--data` input trains on, which modalities each shard holds, and whether each task of `--mix` can
produce a sequence at all under `--seq-len`.

Used on the driver (`check_training_input`: console warnings, and a clear refusal when no
requested task can produce a sequence) and on every worker (train.stream builds its per-modality
sample streams from `input_census`), so both sides reach the same conclusions from the same files.

Modality from the sample metas. The index records each sample's modality (`modalities`, index
version 3: the meta's own `modality`) next to its media and caption token counts; for an index
without them (version < 3), the sample metas are read from the tar (sharding.reader.sample_modalities).
A token count never decides what a sample is: an EnCodec clip of 32 frames at n_q 8 has exactly the
256 tokens of a 16x16 image grid.
"""

from __future__ import annotations

import logging
import posixpath
import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from sharding.errors import ShardError
from sharding.format import ShardRef, index_modalities, list_shards, url_to_fs
from sharding.reader import sample_modalities
from sharding.outdir import SPACE_NAME, path_of, read_bytes
from train.config import TASKS, TrainConfig, TrainError, split_names
from train.sequences import MEDIA_OF
from uti.errors import TokenSpaceError
from uti.modalities import MODALITIES  # also read from here by train.stream
from uti.token_space import TokenSpace

log = logging.getLogger(__name__)

# The fixed tokens around media and caption (see train.sequences): a media task is
# <bos><tag><bo?> M <eo?><bot> C <eot><eos> (7 + M + C tokens), text is <bos><txt><bot> C <eot><eos> (5 + C).
MEDIA_OVERHEAD = 7
TEXT_OVERHEAD = 5

# Split names that mean the same thing in the datasets we read: Clotho says development/validation/
# evaluation, AudioCaps and LLaVA (hash split) say train/val/test. An alias is used only when the
# exact name does not exist in an input.
SPLIT_ALIASES: tuple[tuple[str, ...], ...] = (
    ("train", "development"),
    ("val", "validation", "valid"),
    ("test", "evaluation", "eval"),
)


# ---- splits ------------------------------------------------------------------------------------------
def splits_in(out: str) -> list[str]:
    """Split folders under OUT/shards (cheap: one listing, no index is read)."""
    fs, root = url_to_fs(out)
    shards = posixpath.join(root, "shards")
    try:
        entries = fs.ls(shards, detail=True)
    except (FileNotFoundError, OSError):
        return []
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")


def aliases_of(split: str) -> tuple[str, ...]:
    """The other names of `split` (empty when it has none)."""
    for group in SPLIT_ALIASES:
        if split in group:
            return tuple(s for s in group if s != split)
    return ()


def _describe_splits(out: str) -> str:
    found = [(s, len(list_shards(out, s))) for s in splits_in(out)]
    found = [(s, n) for s, n in found if n]
    if not found:
        return "it has no complete shards at all (is it the OUT folder of a finished `uti tokenize`?)"
    return "splits there: " + ", ".join(f"{s} ({n} shard{'s' if n != 1 else ''})" for s, n in found)


def resolve_split(out: str, requested: str) -> str:
    """The split of `out` to read for the requested name: the name itself when it has complete
    shards, else its one alias that has (train <-> development, val <-> validation, test <->
    evaluation); otherwise a TrainError that lists the splits the input has."""
    if list_shards(out, requested):
        return requested
    present = [a for a in aliases_of(requested) if a in splits_in(out) and list_shards(out, a)]
    if len(present) == 1:
        log.info("--data %s: no split %r, using its alias %r", out, requested, present[0])
        return present[0]
    if len(present) > 1:
        raise TrainError(f"--data {out}: no split {requested!r}, and its aliases {', '.join(present)} both exist; "
                         f"name one with --split (one name per --data, comma-separated, in --data order)")
    tried = f" (nor its alias{'es' if len(aliases_of(requested)) > 1 else ''} {', '.join(aliases_of(requested))})" \
        if aliases_of(requested) else ""
    raise TrainError(f"--data {out}: no complete shards for split {requested!r}{tried}; {_describe_splits(out)}. "
                     "Pass --split NAME, or one name per --data in the same order (--split development,train)")


def requested_splits(split: str, n_inputs: int) -> list[str]:
    """--split as one name per input: one name for all inputs, or exactly one per --data."""
    names = split_names(split)
    if len(names) == 1:
        return names * n_inputs
    if len(names) != n_inputs:
        raise TrainError(f"--split {split!r} names {len(names)} splits for {n_inputs} --data input(s); give one name "
                         "for all inputs or one per --data, in the same order")
    return names


def resolve_splits(outs: Sequence[str], split: str) -> list[str]:
    """The split each input trains on (see resolve_split)."""
    return [resolve_split(out, name) for out, name in zip(outs, requested_splits(split, len(outs)))]


def heldout_split(out: str, train_split: str) -> str | None:
    """The split of `out` the text-drift check reads: a validation/test split other than the (already
    resolved) training split when there is one, any other split next, the training split last."""
    splits = [s for s in splits_in(out) if list_shards(out, s)]
    if not splits:
        return None
    others = [s for s in splits if s != train_split]
    preferred = [s for group in SPLIT_ALIASES[1:] for s in group if s in others]
    return (preferred or others or [train_split])[0]


# ---- modalities from the index -------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaShape:
    """What the token space says about media token counts (sequence lengths, not modalities)."""

    n_q: int | None  # audio tokens per frame in the token space's layout (n_q when frame-major; SNAC 24 kHz: 7)

    @classmethod
    def of(cls, space: TokenSpace) -> "MediaShape":
        """From the token space's audio layout (TokenSpace.layout), never from an assumed frame-major one."""
        return cls(n_q=space.layout("audio").tokens_per_frame if space.has_modality("audio") else None)

    @classmethod
    def unknown(cls) -> "MediaShape":
        """Without a token space: audio may always be split."""
        return cls(n_q=None)


def input_shape(out: str) -> MediaShape:
    """The media shape of OUT/token_space.json (the driver has already required and checked it);
    unknown when a caller points the stream at shards without one."""
    raw = read_bytes(out, SPACE_NAME, flag="--data")
    if raw is None:
        return MediaShape.unknown()
    try:
        return MediaShape.of(TokenSpace.from_json_bytes(raw, where=path_of(out, SPACE_NAME)))
    except TokenSpaceError as exc:
        raise TrainError(str(exc)) from None


@dataclass(frozen=True)
class SampleSizes:
    """Index sizes of the samples of one modality: media and caption token counts, in order."""

    media: tuple[int, ...] = ()
    text: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.media)


@dataclass(frozen=True)
class InputCensus:
    """One input (OUT, split) as its indexes describe it."""

    out: str
    split: str
    refs: tuple[ShardRef, ...]  # sorted by name
    shape: MediaShape
    shard_modalities: Mapping[str, frozenset[str]]  # shard name -> modalities it holds
    sizes: Mapping[str, SampleSizes]  # modality -> its samples' sizes
    # modality -> shard name -> in-shard positions of its samples (train.stream partitions these across ranks)
    positions: Mapping[str, Mapping[str, tuple[int, ...]]] = dataclasses.field(default_factory=dict)

    def candidates(self, modality: str) -> list[ShardRef]:
        """The shards that hold samples of `modality`, in name order."""
        return [r for r in self.refs if modality in self.shard_modalities[r.name]]

    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if self.sizes.get(m)]


_SAID_LEGACY: set[tuple[str, str]] = set()  # (out, split) whose older indexes were already named in this process


def input_census(out: str, split: str, *, space: TokenSpace | None = None,
                 refs: Iterable[ShardRef] | None = None) -> InputCensus:
    shape = input_shape(out) if space is None else MediaShape.of(space)
    refs = sorted(list_shards(out, split) if refs is None else refs, key=lambda r: r.name)
    per_shard: dict[str, frozenset[str]] = {}
    media: dict[str, list[int]] = {m: [] for m in MODALITIES}
    text: dict[str, list[int]] = {m: [] for m in MODALITIES}
    positions: dict[str, dict[str, tuple[int, ...]]] = {m: {} for m in MODALITIES}
    for ref in refs:
        here: dict[str, list[int]] = {m: [] for m in MODALITIES}
        counts, captions = ref.index["token_counts"], ref.index["text_token_counts"]
        for i, m in enumerate(_modalities(ref)):
            media[m].append(int(counts[i]))
            text[m].append(int(captions[i]))
            here[m].append(i)
        per_shard[ref.name] = frozenset(m for m in MODALITIES if here[m])
        for m in MODALITIES:
            if here[m]:
                positions[m][ref.name] = tuple(here[m])
    legacy = sum(1 for r in refs if index_modalities(r.index) is None)
    if legacy and (out, split) not in _SAID_LEGACY:
        _SAID_LEGACY.add((out, split))
        log.warning("%s split %s: %d of %d shard indexes predate per-sample modalities (index version < 3), so "
                    "those shards were read in full to take each sample's modality from its meta; a new `uti "
                    "tokenize` into a fresh OUT records them in the index", out, split, legacy, len(refs))
    sizes = {m: SampleSizes(tuple(media[m]), tuple(text[m])) for m in MODALITIES}
    return InputCensus(out=out, split=split, refs=tuple(refs), shape=shape, shard_modalities=per_shard, sizes=sizes,
                       positions=positions)


def _modalities(ref: ShardRef) -> list[str]:
    """Each sample's modality (its meta's, via the index), refusing one training has no stream for."""
    try:
        found = sample_modalities(ref)
    except ShardError as exc:
        raise TrainError(str(exc)) from None
    for i, m in enumerate(found):
        if m not in MODALITIES:
            raise TrainError(f"{ref.tar_path}: sample #{i} ({ref.index['ids'][i]!r}) has modality {m!r}, not one of "
                             f"{', '.join(MODALITIES)}; re-run `uti tokenize` for it")
    return found


# ---- can a task produce a sequence? --------------------------------------------------------------------
def split_fits(task: str, *, seq_len: int, overlong: str, n_q: int | None) -> bool:
    """Whether --overlong split makes any long sample of `task` fit: audio is cut at frame
    boundaries, so it does when one frame fits next to a one-token caption."""
    return overlong == "split" and MEDIA_OF[task] == "audio" and (n_q is None or 1 + MEDIA_OVERHEAD + n_q <= seq_len)


@dataclass(frozen=True)
class TaskCheck:
    """What the indexes say about one requested task over all inputs."""

    task: str
    samples: int  # samples that could serve the task (its modality, or any for text)
    fit: int  # of those, how many may give a sequence within seq_len
    no_caption: int
    shortest: int | None  # shortest / longest sequence of the task (None: no captioned sample)
    longest: int | None

    @property
    def possible(self) -> bool:
        return self.fit > 0

    def problem(self, cfg: TrainConfig) -> str | None:
        """A console line when the task gets few or no sequences, else None."""
        what = "samples" if MEDIA_OF[self.task] is None else f"{MEDIA_OF[self.task]} samples"
        if self.samples == 0:
            return (f"task {self.task}: the training split(s) hold no {what}; it gets no sequences (add such data "
                    f"with --data, or leave {self.task} out of --mix)")
        over = self.samples - self.no_caption - self.fit
        lengths = f"its sequences would be {self.shortest}..{self.longest} tokens" if self.shortest is not None else ""
        can_split = MEDIA_OF[self.task] == "audio" and cfg.overlong != "split"
        fix = "raise --seq-len" + (" or use --overlong split" if can_split else "")
        if self.fit == 0:
            if over == 0:
                return f"task {self.task}: none of the {self.samples} {what} has a caption; it gets no sequences"
            return (f"task {self.task}: all {over} captioned {what} are longer than --seq-len {cfg.seq_len} "
                    f"({lengths}); it gets no sequences: {fix}")
        if over * 2 > self.samples:
            return (f"task {self.task}: {over} of {self.samples} {what} are longer than --seq-len {cfg.seq_len} "
                    f"({lengths}); only the {self.fit} that fit are repeated to keep the mix ({fix} to use them all)")
        return None


def fit_mask(task: str, sizes: SampleSizes, *, seq_len: int, overlong: str, n_q: int | None) -> np.ndarray:
    """Per sample of `sizes`: may it give a sequence of `task` within seq_len? False only when it
    certainly cannot: no caption, or too long even with a one-token caption (the index has only the
    total caption length) and --overlong split cannot cut it."""
    media = np.asarray(sizes.media, dtype=np.int64) * (MEDIA_OF[task] is not None)  # text docs hold no media
    captioned = np.asarray(sizes.text, dtype=np.int64) > 0
    overhead = TEXT_OVERHEAD if MEDIA_OF[task] is None else MEDIA_OVERHEAD
    fits = (media + 1 + overhead <= seq_len) | split_fits(task, seq_len=seq_len, overlong=overlong, n_q=n_q)
    return fits & captioned


def check_tasks(censuses: Sequence[InputCensus], cfg: TrainConfig) -> dict[str, TaskCheck]:
    """Per task of the mix (ratio > 0): how many samples can serve it and how many may fit."""
    out: dict[str, TaskCheck] = {}
    for task in (t for t in TASKS if cfg.mix.get(t, 0) > 0):
        media_task = MEDIA_OF[task] is not None
        samples = fit = no_caption = 0
        lows: list[int] = []
        highs: list[int] = []
        for c in censuses:
            for m in ((MEDIA_OF[task],) if media_task else MODALITIES):
                sizes = c.sizes.get(m, SampleSizes())
                media = np.asarray(sizes.media, dtype=np.int64) * media_task
                text = np.asarray(sizes.text, dtype=np.int64)
                captioned = text > 0
                overhead = MEDIA_OVERHEAD if media_task else TEXT_OVERHEAD
                samples += len(media)
                no_caption += int((~captioned).sum())
                fit += int(fit_mask(task, sizes, seq_len=cfg.seq_len, overlong=cfg.overlong, n_q=c.shape.n_q).sum())
                if captioned.any():  # shortest: a one-token caption; longest: all captions
                    lows.append(int(media[captioned].min()) + 1 + overhead)
                    highs.append(int((media + text)[captioned].max()) + overhead)
        out[task] = TaskCheck(task=task, samples=samples, fit=fit, no_caption=no_caption,
                              shortest=min(lows) if lows else None, longest=max(highs) if highs else None)
    return out


def check_training_input(outs: Sequence[str], splits: Sequence[str], cfg: TrainConfig) -> list[str]:
    """Driver-side check of the whole training input against --mix and --seq-len: returns the
    console warnings (a task that gets no or few sequences) and raises TrainError when none of the
    requested tasks can produce a sequence. The runner prints the warnings before Ray starts."""
    censuses = [input_census(out, split) for out, split in zip(outs, splits)]
    checks = check_tasks(censuses, cfg)
    warnings = [line for c in checks.values() if (line := c.problem(cfg))]
    if not any(c.possible for c in checks.values()):
        raise TrainError("none of the requested tasks (--mix " + ",".join(f"{t}={cfg.mix[t]:g}" for t in checks)
                         + ") can produce a training sequence:\n  " + "\n  ".join(warnings))
    missing = [t for t, c in checks.items() if not c.possible]
    if missing:
        kept = {t: cfg.mix[t] for t, c in checks.items() if c.possible}
        total = sum(kept.values())
        warnings.append("--mix is renormalised over the tasks that can be trained: "
                        + ", ".join(f"{t}={v / total:.3g}" for t, v in kept.items()))
    return warnings


__all__ = ["MediaShape", "InputCensus", "input_census", "resolve_split", "resolve_splits", "requested_splits",
           "heldout_split", "check_training_input", "check_tasks", "fit_mask", "SPLIT_ALIASES"]

