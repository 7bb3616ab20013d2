"""The per-worker input pipeline: task first, then a sample of its modality -> docs -> packed batches.

Why task first: shards are (almost always) single-modality, because the plan sorts rows by ID.
Choosing a task per sample among those its modality allows made the task ratio follow whatever
shard a rank happened to be reading (30% image tasks requested, none for 30 steps, loss swinging
between modalities). Here every doc starts with a task drawn from `--mix`, and then takes the next
sample from a stream of that task's modality:

  * TaskScheduler: a seeded draw weighted by each task's deficit against the mix (how many docs it
    is behind its share), so the realised share of docs per task stays within about one doc of
    the mix at every step, while the order stays random. Tasks whose modality this rank has no
    data for are left out and the mix renormalised over the others (said once in the log).
  * ModalityStream, one per (input, modality): walks the shards that hold that modality (from the
    index, see train.census) in a seeded order per epoch, keeps only that modality's samples, and
    hands them out through a small seeded shuffle buffer. Streams cycle their epochs
    independently, so a small modality repeats while a large one is still in its first epoch.
    A modality with at least as many shards as ranks is split across ranks by whole shards (rank r
    takes positions r::world of the epoch's order); one with fewer shards by samples (every rank
    reads its shards and keeps every world-th sample of the modality), so no rank lacks it.
  * `text` takes captions from every stream in turn (text-only samples and media captions);
    a2t/t2a from the audio streams, i2t/t2i from the image streams, rotating over inputs.

A drawn sample that gives no doc (no caption, overlong with --overlong drop) is counted and the
task takes the next one, so a task keeps its share. A task whose samples keep failing for longer
than its streams hold samples is dropped on this rank with a warning; when no task is left the
run stops with an error naming the counts. The driver warns about such tasks up front
(train.census.check_training_input), from the indexes.

Resume state = every stream's position, shuffle buffer (samples inline, as base64 IDs) and draw
count, the scheduler's draw count, the task rotation, the packer's pending docs and the counters:
a resumed run sees exactly the batches the uninterrupted run would have seen (same world size).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from sharding.format import ShardRef
from sharding.reader import Sample, ShardReader, read_shard
from train.census import (
    MODALITIES, InputCensus, MediaShape, fit_mask, heldout_split, input_census, requested_splits, resolve_split,
)
from train.config import TASKS, TrainConfig, TrainError
from train.sequences import (
    MEDIA_OF, Doc, Packer, SeqStats, Specials, build_doc, collate, sample_to_docs, split_captions,
)

log = logging.getLogger(__name__)

STATE_FORMAT = "uti.train_stream"
STATE_VERSION = 2
SHUFFLE_BUFFER = 16  # samples per (input, modality) stream; they are part of every checkpoint's data state
_MODALITY_CODE = {m: i for i, m in enumerate(MODALITIES)}


def _rng(*key: int) -> np.random.Generator:
    """A generator for one decision, derived from its coordinates: nothing to carry across resume
    but the counters."""
    return np.random.default_rng([int(k) for k in key])


# ---- one modality of one input --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What one ModalityStream reads."""

    input: int  # position of the input in --data
    out: str
    token_space_id: str
    modality: str
    refs: tuple[ShardRef, ...]  # shards holding the modality, in name order
    claimed: Mapping[str, frozenset[str]]  # shard name -> modalities its index says it holds
    samples: int  # samples of the modality in those shards (from the index)
    by_samples: bool  # fewer shards than ranks: every rank reads them all and keeps every world-th sample

    @property
    def key(self) -> str:
        return f"{self.input}:{self.modality}"


class ModalityStream:
    """Samples of one modality of one input for one rank: seeded shard order per epoch, a rank's
    share, a bounded seeded shuffle buffer; resumable."""

    def __init__(self, spec: StreamSpec, *, seed: int, rank: int, world_size: int, buffer_size: int,
                 shape: MediaShape):
        self.spec = spec
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        # Never more than about one epoch of this rank's share: a tiny modality would otherwise hold
        # the same samples several times over (read from several epochs ahead).
        self.buffer_size = max(1, min(int(buffer_size), spec.samples // self.world))
        self.shape = shape
        self.epoch = 0
        self.pos = 0  # position in this epoch's walk (list of this rank's shards)
        self.in_shard = 0  # samples of the current shard already read (all modalities)
        self.ordinal = 0  # samples of the modality met in this epoch (the by-samples share)
        self.yielded = 0  # samples handed to the buffer in this epoch
        self.draws = 0
        self.buffer: list[tuple[Sample, int]] = []  # (sample, epoch it was read in)
        self.empty = False
        self.found = 0  # samples of the modality met in the current shard (any rank's)
        self.barren: set[str] = set()  # shards read whole that held none of the modality
        self.stray = 0
        self._it: Iterator[Sample] | None = None
        self._warned: set[str] = set()
        self._walk: tuple[int, list[ShardRef]] = (-1, [])

    @property
    def key(self) -> str:
        return self.spec.key

    def walk(self, epoch: int) -> list[ShardRef]:
        """This rank's shards of an epoch, in reading order: the same seeded permutation on every
        rank, of which rank r takes positions r::world (by shards) or all (by samples)."""
        if self._walk[0] != epoch:
            code = _MODALITY_CODE[self.spec.modality]
            order = _rng(self.seed, self.spec.input, code, epoch).permutation(len(self.spec.refs))
            refs = [self.spec.refs[i] for i in order]
            self._walk = (epoch, refs if self.spec.by_samples else refs[self.rank::self.world])
        return self._walk[1]

    def _read_one(self) -> tuple[Sample, int] | None:
        """The next sample of this rank's share, crossing into the next epoch; None when the stream
        can never give one (see `_exhausted`)."""
        modality = self.spec.modality
        while True:
            walk = self.walk(self.epoch)
            if self.pos >= len(walk):
                if self._exhausted():
                    self.empty = True
                    return None
                self.epoch, self.pos, self.in_shard, self.ordinal, self.yielded = self.epoch + 1, 0, 0, 0, 0
                continue
            ref = walk[self.pos]
            if ref.name in self.barren:  # read before and held none of the modality: the same yield, unread
                self.pos += 1
                continue
            if self._it is None:
                self._it = read_shard(ref.tar_path, expected_token_space=self.spec.token_space_id, index=ref.index,
                                      start=self.in_shard)
                self.found = 0 if self.in_shard == 0 else self.found
            for sample in self._it:
                self.in_shard = sample.index_in_shard + 1
                actual = str(sample.meta.get("modality"))
                if actual != modality:
                    self._check_stray(ref, sample, actual)
                    continue
                self.found += 1
                mine = not self.spec.by_samples or self.ordinal % self.world == self.rank
                self.ordinal += 1
                if mine:
                    self.yielded += 1
                    return sample, self.epoch
            if self.found == 0:
                # Its index promised the modality by token count only (an audio clip of exactly an
                # image's token count): remember, so later epochs do not read it again.
                self.barren.add(ref.name)
            self._it = None
            self.pos, self.in_shard, self.found = self.pos + 1, 0, 0

    def _exhausted(self) -> bool:
        """At the end of an epoch: can this rank never get a sample of the stream? Sharing by
        samples, every epoch holds the same number for each rank, so one epoch without is final.
        Sharing by shards, the shards rotate over ranks by epoch, so only when every shard has been
        found without the modality."""
        if self.spec.by_samples:
            return self.yielded == 0
        return all(r.name in self.barren for r in self.spec.refs)

    def _check_stray(self, ref: ShardRef, sample: Sample, actual: str) -> None:
        """A sample the index put in this modality (by its token count) that is of another one, in a
        shard no stream of its own modality reads: count it and say so once per shard."""
        claimed_here = self.shape.modalities_of_count(len(sample.tokens))
        if actual in self.spec.claimed[ref.name] or self.spec.modality not in claimed_here:
            return
        self.stray += 1
        if ref.name not in self._warned:
            self._warned.add(ref.name)
            log.warning("%s: %s sample %r has %d tokens, exactly an image's, in a shard of only image-sized samples: "
                        "training does not read it (re-tokenize so it shares a shard with other %s)",
                        ref.tar_path, actual, sample.meta.get("id"), len(sample.tokens), actual)

    def next(self) -> tuple[Sample, int] | None:
        """A sample (and the epoch it was read in) from the shuffle buffer, or None when empty."""
        while len(self.buffer) < self.buffer_size and not self.empty:
            item = self._read_one()
            if item is None:
                break
            self.buffer.append(item)
        if not self.buffer:
            return None
        j = int(_rng(self.seed, self.spec.input, _MODALITY_CODE[self.spec.modality], self.rank, self.draws)
                .integers(len(self.buffer)))
        self.draws += 1
        item = self.buffer[j]
        self.buffer[j] = self.buffer[-1]
        self.buffer.pop()
        return item

    # ---- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "in_shard": self.in_shard, "ordinal": self.ordinal,
                "yielded": self.yielded, "draws": self.draws, "empty": self.empty, "stray": self.stray,
                "found": self.found, "barren": sorted(self.barren),
                "buffer": [_encode_sample(s, e) for s, e in self.buffer], "shards": [r.name for r in self.spec.refs]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["shards"]) != [r.name for r in self.spec.refs]:
            raise TrainError(f"data state of stream {self.key} ({self.spec.out}) was saved over other shards; "
                             "resume with the same --data and --split")
        for name in ("epoch", "pos", "in_shard", "ordinal", "yielded", "draws", "stray", "found"):
            setattr(self, name, int(state[name]))
        self.empty = bool(state["empty"])
        self.barren = {str(n) for n in state["barren"]}
        self.buffer = [_decode_sample(d) for d in state["buffer"]]
        self._it = None


def _encode_ids(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<u4").tobytes()).decode("ascii")


def _decode_ids(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s.encode("ascii")), dtype="<u4").astype(np.uint32)


def _encode_sample(sample: Sample, epoch: int) -> dict:
    return {"key": sample.key, "tokens": _encode_ids(sample.tokens), "text": _encode_ids(sample.text),
            "meta": sample.meta, "shard": sample.shard, "split": sample.split, "index": sample.index_in_shard,
            "epoch": epoch}


def _decode_sample(d: Mapping[str, Any]) -> tuple[Sample, int]:
    sample = Sample(key=str(d["key"]), tokens=_decode_ids(d["tokens"]), text=_decode_ids(d["text"]),
                    meta=dict(d["meta"]), shard=str(d["shard"]), split=str(d["split"]), index_in_shard=int(d["index"]))
    return sample, int(d["epoch"])


def stream_specs(census: InputCensus, *, input: int, token_space_id: str, rank: int,
                 world_size: int) -> list[StreamSpec]:
    """The streams this rank has for one input (a modality without data on this rank has none)."""
    specs = []
    for m in MODALITIES:
        refs = tuple(census.candidates(m))
        n = len(census.sizes[m])
        by_samples = len(refs) < world_size
        if not refs or (by_samples and n <= rank):
            continue  # (with the by-shards share every rank gets at least one shard)
        specs.append(StreamSpec(input=input, out=census.out, token_space_id=token_space_id, modality=m, refs=refs,
                                claimed=census.shard_modalities, samples=n, by_samples=by_samples))
    return specs


# ---- the task schedule --------------------------------------------------------------------------------
class TaskScheduler:
    """Draws the next task: weighted by each task's deficit against the mix, seeded per draw."""

    def __init__(self, mix: Mapping[str, float], *, seed: int, rank: int):
        self.mix = {t: float(mix.get(t, 0.0)) for t in TASKS if mix.get(t, 0.0) > 0}
        self.seed, self.rank = int(seed), int(rank)
        self.draws = 0

    def target(self, available: Sequence[str]) -> dict[str, float]:
        total = sum(self.mix[t] for t in available)
        return {t: self.mix[t] / total for t in available}

    def choose(self, available: Sequence[str], done: Mapping[str, int]) -> str:
        """`done`: docs built so far per task (this rank)."""
        target = self.target(available)
        n = sum(done.get(t, 0) for t in available)
        deficit = np.asarray([max(0.0, target[t] * (n + 1) - done.get(t, 0)) for t in available])
        if deficit.sum() <= 0:  # cannot happen (deficits sum to 1), but never divide by zero
            deficit = np.asarray([target[t] for t in available])
        i = int(_rng(self.seed, self.rank, 1_000_003, self.draws).choice(len(available), p=deficit / deficit.sum()))
        self.draws += 1
        return available[i]


# ---- the batch stream ---------------------------------------------------------------------------------
class BatchStream:
    def __init__(
        self,
        inputs: Sequence[Mapping[str, str]],
        *,
        cfg: TrainConfig,
        sp: Specials,
        vocab_size: int,
        rank: int,
        world_size: int,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ):
        """inputs: [{"out": OUT, "token_space_id": ID, "split": SPLIT}] -- each input is read with its
        own token space ID (the driver already compared it with the run's, or recorded the
        override) and its own resolved split (train.census.resolve_split; resolved here when absent)."""
        self.cfg = cfg
        self.sp = sp
        self.vocab_size = vocab_size
        self.rank = rank
        self.world_size = world_size
        self.names = [i["out"] for i in inputs]
        names = requested_splits(cfg.split, len(inputs))
        self.splits = [i.get("split") or resolve_split(i["out"], name) for i, name in zip(inputs, names)]
        self.streams: dict[str, ModalityStream] = {}
        self.censuses: list[InputCensus] = []
        for k, (inp, split) in enumerate(zip(inputs, self.splits)):
            # Fail fast (token space of every shard, from the indexes) exactly as a ShardReader does.
            refs = ShardReader(inp["out"], expected_token_space=inp["token_space_id"], split=split).refs
            census = input_census(inp["out"], split, refs=refs)
            self.censuses.append(census)
            for spec in stream_specs(census, input=k, token_space_id=inp["token_space_id"], rank=rank,
                                     world_size=world_size):
                self.streams[spec.key] = ModalityStream(spec, seed=cfg.seed, rank=rank, world_size=world_size,
                                                        buffer_size=shuffle_buffer, shape=census.shape)
        self.scheduler = TaskScheduler(cfg.mix, seed=cfg.seed, rank=rank)
        self.sources = self._sources()
        self.turn = {t: 0 for t in TASKS}
        self.failures = {t: 0 for t in TASKS}  # consecutive draws of the task that gave no doc
        self.dropped: dict[str, str] = {}  # task -> why this rank stopped training it (runtime)
        self.packer = Packer(seq_len=cfg.seq_len, pad_id=sp.pad)
        self.stats = SeqStats()
        self._said: set[str] = set()
        self._announce()

    # ---- which streams serve which task ------------------------------------------------------------
    def _sources(self) -> dict[str, list[str]]:
        """Per task of the mix: the streams that can give it a doc (index check, train.census.fit_mask)."""
        out: dict[str, list[str]] = {}
        for task in self.scheduler.mix:
            keys = []
            for key, stream in self.streams.items():
                if MEDIA_OF[task] not in (None, stream.spec.modality):
                    continue
                census = self.censuses[stream.spec.input]
                if fit_mask(task, census.sizes[stream.spec.modality], seq_len=self.cfg.seq_len,
                            overlong=self.cfg.overlong, n_q=census.shape.n_q).any():
                    keys.append(key)
            out[task] = keys
        return out

    def available(self) -> list[str]:
        return [t for t in self.scheduler.mix if self.sources.get(t) and t not in self.dropped]

    def _announce(self) -> None:
        missing = [t for t in self.scheduler.mix if t not in self.available()]
        if not self.available():
            raise TrainError(self._nothing_left())
        if missing:
            target = self.scheduler.target(self.available())
            self._say(f"rank {self.rank}: task(s) {', '.join(missing)} of --mix get no sequences from this rank's data "
                      f"({self._data()}); the mix is renormalised to "
                      + ",".join(f"{t}={v:.3g}" for t, v in target.items()))

    def _say(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            log.warning("%s", line)

    def _data(self) -> str:
        """This rank's streams, for messages: 'OUT split S: 30 audio, 6 image; ...'."""
        parts = []
        for k, census in enumerate(self.censuses):
            have = [f"{s.spec.samples} {s.spec.modality}" for s in self.streams.values() if s.spec.input == k]
            parts.append(f"{census.out} split {census.split}: {', '.join(have) or 'nothing'}")
        return "; ".join(parts)

    def _nothing_left(self) -> str:
        why = "; ".join(f"{t}: {r}" for t, r in self.dropped.items())
        return (f"rank {self.rank}: none of the requested tasks (--mix {','.join(self.scheduler.mix)}) can produce a "
                f"training sequence from this rank's data ({self._data()}){'; ' + why if why else ''}; sequence stats "
                f"{self.stats.to_dict()}. Check --mix against the modalities in the data, the captions, and "
                "--seq-len / --overlong")

    # ---- docs ---------------------------------------------------------------------------------------
    def _patience(self, task: str) -> int:
        """Consecutive failed draws after which a task is given up on this rank: every sample of its
        streams has then been drawn (an epoch per rank share, plus the shuffle buffers) with room."""
        keys = self.sources[task]
        return sum((self.world_size + 1) * self.streams[k].spec.samples + 2 * self.streams[k].buffer_size
                   for k in keys) + 16

    def _docs_for(self, task: str) -> list[Doc]:
        """Docs of one draw of `task`, or [] (the draw failed; counted, the scheduler draws again)."""
        keys = self.sources[task]
        key = keys[self.turn[task] % len(keys)]
        self.turn[task] += 1
        stream = self.streams[key]
        item = stream.next()
        if item is None:  # a whole epoch of this stream held none of its modality on this rank
            self._drop_source(key)
            return []
        sample, epoch = item
        docs = sample_to_docs(tokens=sample.tokens, text=sample.text, meta=sample.meta, sp=self.sp,
                              mix=self.cfg.mix, seq_len=self.cfg.seq_len, overlong=self.cfg.overlong,
                              seed=self.cfg.seed, epoch=epoch, stats=self.stats, task=task)
        for doc in docs:
            if int(doc.ids.max()) >= self.vocab_size:
                raise TrainError(f"{stream.spec.out}: shard {sample.shard} sample {sample.meta.get('id')!r} has token "
                                 f"ID {int(doc.ids.max())} >= the run's vocab size {self.vocab_size} (an overridden "
                                 "token-space mismatch?)")
        if docs:
            self.failures[task] = 0
            return docs
        self.failures[task] += 1
        if self.failures[task] > self._patience(task):
            self.dropped[task] = (f"{self.failures[task]} draws in a row gave no sequence (captions missing, or longer "
                                  f"than --seq-len {self.cfg.seq_len})")
            self._say(f"rank {self.rank}: task {task} is dropped: {self.dropped[task]}")
        return []

    def _drop_source(self, key: str) -> None:
        for task, keys in self.sources.items():
            if key in keys:
                keys.remove(key)
                if not keys:
                    self.dropped.setdefault(task, f"stream {key} holds no sample for rank {self.rank}")
        spec = self.streams[key].spec
        self._say(f"rank {self.rank}: {spec.out} split {self.splits[spec.input]} holds no {spec.modality} sample for "
                  "this rank after all (its index counts were an image's size); the mix is renormalised without it")

    def _fill(self) -> None:
        """Draw tasks until the packer has a closed row."""
        while not self.packer.ready:
            available = self.available()
            if not available:
                raise TrainError(self._nothing_left())
            task = self.scheduler.choose(available, self.stats.tasks)
            for doc in self._docs_for(task):
                self.packer.add(doc)

    def next_batch(self) -> dict[str, np.ndarray]:
        rows = []
        for _ in range(self.cfg.batch_size):
            self._fill()
            rows.append(self.packer.pop_row())
        self.stats.stray = sum(s.stray for s in self.streams.values())
        return collate(rows)

    # ---- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "inputs": self.names, "splits": self.splits,
                "rank": self.rank, "world_size": self.world_size,
                "streams": {k: s.state_dict() for k, s in self.streams.items()},
                "scheduler_draws": self.scheduler.draws, "turn": dict(self.turn), "failures": dict(self.failures),
                "dropped": dict(self.dropped), "sources": {t: list(v) for t, v in self.sources.items()},
                "packer": self.packer.state_dict(), "stats": self.stats.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise TrainError(f"data state is not a {STATE_FORMAT} v{STATE_VERSION} state (an older uti wrote it?); "
                             "resume with the uti version that wrote the checkpoint, or start a new --out")
        if list(state["inputs"]) != self.names or list(state["splits"]) != self.splits \
                or set(state["streams"]) != set(self.streams):
            raise TrainError(f"data state was saved for inputs {state['inputs']} (splits {state['splits']}, streams "
                             f"{sorted(state['streams'])}); this run has {self.names} ({self.splits}, "
                             f"{sorted(self.streams)}): resume with the same --data and --split in the same order")
        if (int(state["rank"]), int(state["world_size"])) != (self.rank, self.world_size):
            raise TrainError(f"data state is of rank {state['rank']} of {state['world_size']}, this worker is rank "
                             f"{self.rank} of {self.world_size}; resume with the same --num-workers")
        for k, s in self.streams.items():
            s.load_state_dict(state["streams"][k])
        self.scheduler.draws = int(state["scheduler_draws"])
        self.turn = {t: int(state["turn"].get(t, 0)) for t in TASKS}
        self.failures = {t: int(state["failures"].get(t, 0)) for t in TASKS}
        self.dropped = {str(t): str(r) for t, r in state["dropped"].items()}
        self.sources = {str(t): [str(k) for k in v] for t, v in state["sources"].items()}
        self.packer.load_state_dict(state["packer"])
        self.stats = SeqStats.from_dict(state["stats"])


def batch_checksum(batch: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a batch's IDs and loss mask: lets tests (and people) compare data positions."""
    crc = zlib.crc32(np.ascontiguousarray(batch["input_ids"]).tobytes())
    return zlib.crc32(np.ascontiguousarray(batch["targets"]).tobytes(), crc)


def heldout_text_docs(out: str, *, token_space_id: str, train_split: str, sp: Specials, seq_len: int,
                      limit: int) -> tuple[list[Doc], str | None]:
    """Text-only docs of up to `limit` captions for the drift check, preferably from a split other
    than the training one (held out); falls back to the training split when OUT has no other.
    `train_split` is the input's resolved split (train.census.resolve_split), so an aliased training
    split (Clotho's development for --split train) is never taken for held-out data."""
    split = heldout_split(out, train_split)
    if split is None or limit == 0:
        return [], split
    docs: list[Doc] = []
    for sample in ShardReader(out, expected_token_space=token_space_id, split=split):
        captions = split_captions(sample.text, sample.meta.get("caption_token_lengths", []),
                                  what=f"sample {sample.meta.get('id')!r}")
        for cap in captions:
            doc = build_doc("text", media=None, caption=cap, sp=sp)
            if 0 < len(cap) and len(doc) <= seq_len:
                docs.append(doc)
            if len(docs) >= limit:
                return docs, split
    return docs, split
