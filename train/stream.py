"""The per-worker input pipeline: task first, then a sample of its modality -> docs -> packed batches.

Why task first: shards are (almost always) single-modality, because the plan sorts rows by ID.
Choosing a task per sample among those its modality allows made the task ratio follow whatever
shard a rank happened to be reading (30% image tasks requested, none for 30 steps, loss swinging
between modalities). Here every doc starts with a task drawn from `--mix`, and then takes the next
sample from a stream of that task's modality:

  * TaskScheduler (train.mix): a seeded draw weighted by each task's deficit against the mix (how many docs it
    is behind its share), so the realised share of docs per task stays within about one doc of
    the mix at every step, while the order stays random. Tasks whose modality this rank has no
    data for are left out and the mix renormalised over the others (said once in the log).
  * ModalityStream, one per (input, modality): the modality's samples (their positions, from the
    index, see train.census) in a seeded shard order per epoch form one list, the same on every
    rank. Every rank takes an equal, contiguous share of it, ceil(N / world) samples; the remainder
    rule pads the list by repeating the epoch's first samples (torch DistributedSampler's
    drop_last=False), so no sample is dropped and no rank runs out first (no DDP hang). A rank
    seeks to the first sample of its share inside a shard (index version 2 member offsets; older
    indexes stream over the samples before it) and stops after its last. The share goes through
    a seeded shuffle buffer (--shuffle-buffer). Streams cycle their epochs independently, so a
    small modality repeats while a large one is still in its first epoch.
  * `text` takes captions from every stream in turn (text-only samples and media captions);
    a2t/t2a from the audio streams, i2t/t2i from the image streams, rotating over inputs; with
    --data-weights the input is drawn instead by its deficit against the weights (InputMixer, train.mix),
    counted in samples or (--mix-by tokens) tokens.

A drawn sample that gives no doc (no caption, overlong with --overlong drop) is counted and the
task takes the next one, so a task keeps its share. A task whose samples keep failing for longer
than its streams hold samples is dropped on this rank with a warning; when no task is left the
run stops with an error naming the counts. The driver warns about such tasks up front
(train.census.check_training_input), from the indexes.

Resume state = every stream's position (epoch, samples of the share taken), shuffle buffer
(by position: shard, index, epoch; re-read on load by seeking) and draw count, the scheduler's draw count, the task rotation or
the input mixer's counters, the packer's pending docs and the counters:
a resumed run sees exactly the batches the uninterrupted run would have seen (same world size).
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from sharding.format import ShardRef
from sharding.prefetch import DEFAULT_LIMITS, PrefetchLimits, ShardPrefetcher, shard_range
from sharding.reader import Sample, ShardReader, read_shard
from sharding.storage import is_url
from train.census import (
    MODALITIES, InputCensus, MediaShape, fit_mask, heldout_split, input_census, requested_splits, resolve_split,
)
from train.config import TASKS, TrainConfig, TrainError
from train.mix import InputMixer, TaskScheduler, decision_rng  # noqa: F401 - the mixers re-exported here
from train.saved_state import check_keys, in_declared_order
from train.sequences import (
    MEDIA_OF, Doc, Packer, SeqStats, Specials, build_doc, collate, sample_to_docs, split_captions,
)

log = logging.getLogger(__name__)

STATE_FORMAT = "uti.train_stream"
STATE_VERSION = 3  # 3: sample-level rank shares (stream positions are "taken", not shard walks)
_MODALITY_CODE = {m: i for i, m in enumerate(MODALITIES)}


# ---- one modality of one input --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What one ModalityStream reads."""

    input: int  # position of the input in --data
    out: str
    token_space_id: str
    modality: str
    refs: tuple[ShardRef, ...]  # shards holding the modality, in name order
    positions: Mapping[str, Mapping[str, tuple[int, ...]]]  # modality -> shard -> in-shard positions (census)
    samples: int  # positions of the modality in those shards (from the index)

    @property
    def key(self) -> str:
        return f"{self.input}:{self.modality}"


def rank_share(samples: int, world_size: int) -> int:
    """Samples of a stream's epoch that every rank reads: ceil(samples / world). The remainder rule:
    the epoch's order is padded to world * share by repeating its first samples (like torch's
    DistributedSampler with drop_last=False), so every rank gets the same count, none is dropped,
    and no rank waits on another for data."""
    return -(-int(samples) // int(world_size))


class ModalityStream:
    """Samples of one modality of one input for one rank: seeded shard order per epoch, a contiguous
    share of the epoch's samples, a bounded seeded shuffle buffer; resumable.

    Per epoch, the stream's samples (positions from the index) in a seeded shard order form one list
    that is the same on every rank; padded to world * share (rank_share), rank r takes positions
    [r * share, (r + 1) * share). A rank thus reads whole shards in the middle of its share and part
    of at most two at its edges, where it seeks to the first sample it needs (index member offsets,
    sharding.reader.read_shard) and stops after the last."""

    def __init__(self, spec: StreamSpec, *, seed: int, rank: int, world_size: int, buffer_size: int,
                 shape: MediaShape, prefetcher: ShardPrefetcher | None = None):
        self.spec = spec
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self.share = rank_share(spec.samples, self.world)
        # Never more than one epoch of this rank's share: a tiny modality would otherwise hold the
        # same samples several times over (read from several epochs ahead).
        self.buffer_size = max(1, min(int(buffer_size), self.share))
        self.shape = shape
        self.epoch = 0
        self.taken = 0  # positions of this rank's share of the epoch already read
        self.yielded = 0  # samples handed to the buffer in this epoch (positions of another modality are not)
        self.draws = 0
        self.buffer: list[tuple[Sample, int]] = []  # (sample, epoch it was read in)
        self.empty = False
        self.stray = 0
        self._it: Iterator[Sample] | None = None
        self._at: tuple[str, int] | None = None  # (shard, in-shard index the open reader yields next)
        self._warned: set[str] = set()
        self._plan: tuple[int, list[ShardRef], np.ndarray] = (-1, [], np.zeros(0, np.int64))
        # After an elastic resume (another world size): this rank's share of what the old ranks left
        # unread of their epochs, as (epoch, position in the epoch's unpadded list); read first.
        self.pending: list[tuple[int, int]] = []
        self.pending_taken = 0
        # Read-ahead of the next shards' byte ranges on object stores (sharding.prefetch, shared by the rank's
        # streams): the same bytes in the same order, so which samples are read cannot change.
        self.prefetcher = prefetcher if spec.refs and is_url(spec.refs[0].tar_path) else None

    @property
    def key(self) -> str:
        return self.spec.key

    def order(self, epoch: int) -> tuple[list[ShardRef], np.ndarray]:
        """The epoch's shard order (the same seeded permutation on every rank) and the cumulative
        count of the stream's positions over it."""
        if self._plan[0] != epoch:
            code = _MODALITY_CODE[self.spec.modality]
            perm = decision_rng(self.seed, self.spec.input, code, epoch).permutation(len(self.spec.refs))
            refs = [self.spec.refs[i] for i in perm]
            counts = [len(self.spec.positions[self.spec.modality][r.name]) for r in refs]
            self._plan = (epoch, refs, np.cumsum(counts, dtype=np.int64))
        return self._plan[1], self._plan[2]

    def locate(self, epoch: int, position: int) -> tuple[ShardRef, int]:
        """Shard and in-shard index of `position` in the epoch's padded list."""
        refs, cum = self.order(epoch)
        position %= int(cum[-1])  # the padding repeats the epoch's first samples
        s = int(np.searchsorted(cum, position, side="right"))
        before = int(cum[s - 1]) if s else 0
        return refs[s], self.spec.positions[self.spec.modality][refs[s].name][position - before]

    def epoch_positions(self, epoch: int) -> list[tuple[str, int]]:
        """(shard, in-shard index) of this rank's share of an epoch, in reading order (tests, tools)."""
        out = []
        for j in range(self.share):
            ref, i = self.locate(epoch, self.rank * self.share + j)
            out.append((ref.name, i))
        return out

    def _fetch(self, ref: ShardRef, i: int) -> Sample:
        """Sample i of a shard: from the open reader when it is at or before i in that shard (streaming
        on), else from a new reader that seeks to it."""
        if self._it is None or self._at is None or self._at[0] != ref.name or self._at[1] > i:
            self._it = read_shard(ref.tar_path, expected_token_space=self.spec.token_space_id, index=ref.index, start=i,
                                  source=self._prefetched(ref, i))
        for sample in self._it:
            if sample.index_in_shard == i:
                self._at = (ref.name, i + 1)
                if i == self.spec.positions[self.spec.modality][ref.name][-1]:
                    # The stream's last sample of this shard: read to the end, so the reader's end checks
                    # run (tar size; and SHA-256 against the index when this reader started at sample 0).
                    for _ in self._it:
                        pass
                    self._it, self._at = None, None
                return sample
        raise TrainError(f"{ref.tar_path}: ended before sample {i} its index lists; re-run `uti tokenize` for it")

    def _prefetched(self, ref: ShardRef, i: int) -> Any:
        """The fetched bytes of the shard being opened (None: read directly), after asking for the next ones."""
        if self.prefetcher is None:
            return None
        wanted = [r for r in (shard_range(s_ref, first, last, drains=drains)
                              for s_ref, first, last, drains in self._segments_ahead(self.prefetcher.limits.shards)) if r]
        self.prefetcher.retain({r.key for r in wanted}, owner=self)
        for r in wanted:
            self.prefetcher.request(r, owner=self)
        now = shard_range(ref, i, i, drains=False)
        return self.prefetcher.take(ref.tar_path, now.start) if now else None

    def _segments_ahead(self, limit: int) -> list[tuple[ShardRef, int, int, bool]]:
        """(shard, first, last in-shard index, reads to the tar's end) of the next `limit` shards of this
        rank's share in the current epoch, from the position being read now (the next epoch: not ahead)."""
        if self.pending_taken < len(self.pending):
            return []
        refs, cum = self.order(self.epoch)
        total = int(cum[-1]) if len(cum) else 0
        positions = self.spec.positions[self.spec.modality]
        position, end, out = self.rank * self.share + self.taken, (self.rank + 1) * self.share, []
        while total and position < end and len(out) < limit:
            in_epoch = position % total
            s = int(np.searchsorted(cum, in_epoch, side="right"))
            before = int(cum[s - 1]) if s else 0
            count = min(end - position, int(cum[s]) - in_epoch)
            in_shard = positions[refs[s].name]
            last = in_shard[in_epoch - before + count - 1]
            out.append((refs[s], in_shard[in_epoch - before], last, last == in_shard[-1]))
            position += count
        return out

    def _read_one(self) -> tuple[Sample, int] | None:
        """The next sample of this rank's share, crossing into the next epoch; None when a whole
        epoch of the share held none of the modality (every sample read disagreed with the index)."""
        modality = self.spec.modality
        while True:
            if self.pending_taken < len(self.pending):
                epoch, position = self.pending[self.pending_taken]
                ref, i = self.locate(epoch, position)
                sample = self._fetch(ref, i)
                self.pending_taken += 1
                if str(sample.meta.get("modality")) == modality:
                    return sample, epoch
                continue
            if self.taken >= self.share:
                if self.yielded == 0:
                    self.empty = True
                    return None
                self.epoch, self.taken, self.yielded = self.epoch + 1, 0, 0
                continue
            ref, i = self.locate(self.epoch, self.rank * self.share + self.taken)
            sample = self._fetch(ref, i)
            self.taken += 1
            actual = str(sample.meta.get("modality"))
            if actual != modality:
                self._check_stray(ref, sample, actual)
                continue
            self.yielded += 1
            return sample, self.epoch

    def _check_stray(self, ref: ShardRef, sample: Sample, actual: str) -> None:
        """A sample the census put in this modality whose meta says another (the shard changed after its
        index was read): count it and say so once per shard."""
        self.stray += 1
        if ref.name not in self._warned:
            self._warned.add(ref.name)
            log.warning("%s: sample %r is %s in its meta, but the census read %s from the shard's index: training "
                        "skips it (was the shard rewritten during the run? re-run `uti tokenize` for it)",
                        ref.tar_path, sample.meta.get("id"), actual, self.spec.modality)

    def next(self) -> tuple[Sample, int] | None:
        """A sample (and the epoch it was read in) from the shuffle buffer, or None when empty."""
        while len(self.buffer) < self.buffer_size and not self.empty:
            item = self._read_one()
            if item is None:
                break
            self.buffer.append(item)
        if not self.buffer:
            return None
        j = int(decision_rng(self.seed, self.spec.input, _MODALITY_CODE[self.spec.modality], self.rank, self.draws)
                .integers(len(self.buffer)))
        self.draws += 1
        item = self.buffer[j]
        self.buffer[j] = self.buffer[-1]
        self.buffer.pop()
        return item

    # ---- resume -------------------------------------------------------------------------------------
    # A stream's saved state: the counters restored as they are, then every key in the order it is written.
    SAVED_COUNTERS = ("epoch", "taken", "yielded", "draws", "stray")
    STATE_KEYS = ("epoch", "taken", "yielded", "draws", "empty", "stray", "buffer_size", "world_size", "pending",
                  "buffer", "shards")

    def state_dict(self) -> dict:
        return in_declared_order(self.STATE_KEYS, {name: getattr(self, name) for name in self.SAVED_COUNTERS} | {
            "empty": self.empty, "buffer_size": self.buffer_size, "world_size": self.world,
            "pending": [list(p) for p in self.pending[self.pending_taken:]],
            # the buffer by position (shard, index in it, epoch): re-read on load, so a state stays small
            "buffer": [{"shard": smp.shard, "index": smp.index_in_shard, "epoch": e, "key": smp.key}
                       for smp, e in self.buffer],
            "shards": [r.name for r in self.spec.refs]})

    def _check_compatible(self, state: Mapping[str, Any]) -> None:
        """Refuse a stream state with other keys than STATE_KEYS, or saved over other shards than this
        stream's (exact and elastic resume)."""
        check_keys(state, self.STATE_KEYS, what=f"data state of stream {self.key} ({self.spec.out})")
        if list(state["shards"]) != [r.name for r in self.spec.refs]:
            raise TrainError(f"data state of stream {self.key} ({self.spec.out}) was saved over other shards; "
                             "resume with the same --data and --split")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_compatible(state)
        if int(state["buffer_size"]) != self.buffer_size:  # an elastic resume deals the buffers out anew
            raise TrainError(f"data state of stream {self.key} ({self.spec.out}) has a shuffle buffer of "
                             f"{state['buffer_size']} samples, this run {self.buffer_size}: resume with the same "
                             "--shuffle-buffer")
        for name in self.SAVED_COUNTERS:
            setattr(self, name, int(state[name]))
        self.empty = bool(state["empty"])
        self.buffer = self._reread(state["buffer"])
        self.pending, self.pending_taken = [(int(epoch), int(position)) for epoch, position in state["pending"]], 0
        self._it, self._at = None, None

    def _reread(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[Sample, int]]:
        """The buffered samples of a state, read again from their shards (in shard order, seeking),
        checked against the keys the state recorded."""
        refs = {r.name: r for r in self.spec.refs}
        got: dict[int, tuple[Sample, int]] = {}
        self._it, self._at = None, None
        for j in sorted(range(len(entries)), key=lambda j: (entries[j]["shard"], int(entries[j]["index"]))):
            d = entries[j]
            ref = refs.get(str(d["shard"]))
            if ref is None:
                raise TrainError(f"data state of stream {self.key} buffers a sample of shard {d['shard']!r}, which is "
                                 f"not among its shards in {self.spec.out}; resume with the same --data and --split")
            sample = self._fetch(ref, int(d["index"]))
            if sample.key != d["key"]:
                raise TrainError(f"{ref.tar_path}: sample {d['index']} is {sample.key}, the data state buffered "
                                 f"{d['key']}: the shard was rewritten since the checkpoint; start a new --out")
            got[j] = (sample, int(d["epoch"]))
        return [got[j] for j in range(len(entries))]

    # ---- elastic resume -------------------------------------------------------------------------------
    def _unpadded(self, epoch: int) -> dict[tuple[str, int], int]:
        """(shard, in-shard index) -> position in the epoch's unpadded list."""
        refs, _ = self.order(epoch)
        out: dict[tuple[str, int], int] = {}
        for ref in refs:
            for i in self.spec.positions[self.spec.modality][ref.name]:
                out[(ref.name, i)] = len(out)
        return out

    def unread(self, states: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[int, int]], int]:
        """What the old ranks (their stream states, in rank order, of one world size) left unread:
        (epoch, unpadded position) in reading order, and the first epoch none of them started.
        A position counts as read once any rank handed it out of its buffer (the padding's repeats
        of a read sample are not read again); every earlier old pending position still unread stays."""
        old_world = len(states)
        n = self.spec.samples
        share = rank_share(n, old_world)
        first = min(int(old["epoch"]) for old in states)
        frontier = max(int(old["epoch"]) for old in states) + 1
        unread: list[tuple[int, int]] = []
        for old in states:  # old pending, and buffered samples of epochs before `first`: all older epochs
            unread += [(int(epoch), int(position)) for epoch, position in old["pending"]]
            for d in old["buffer"]:
                if int(d["epoch"]) < first:
                    unread.append((int(d["epoch"]), self._unpadded(int(d["epoch"]))[(d["shard"], int(d["index"]))]))
        for epoch in range(first, frontier):
            index = self._unpadded(epoch)
            read: set[int] = set()
            buffered: set[int] = set()
            for r, old in enumerate(states):
                at_epoch, taken = int(old["epoch"]), int(old["taken"])
                upto = share if epoch < at_epoch else taken if epoch == at_epoch else 0
                read |= {(r * share + j) % n for j in range(upto)}
                buffered |= {index[(d["shard"], int(d["index"]))] for d in old["buffer"] if int(d["epoch"]) == epoch}
            unread += [(epoch, position) for position in range(n) if position not in read or position in buffered]
        return unread, frontier

    def load_elastic(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Continue from the states of every rank of a run with another world size: the positions
        they left unread (of every epoch any of them had begun) are split into near-equal contiguous
        parts, one per new rank, read first; then this rank starts the next fresh epoch."""
        for state in states:
            self._check_compatible(state)
        unread, frontier = self.unread(states)
        # Near-equal contiguous parts (sizes differ by at most one), nothing repeated: the stream is
        # endless, so a rank with one sample fewer here never waits; fresh epochs are equal again.
        lo, hi = (len(unread) * self.rank) // self.world, (len(unread) * (self.rank + 1)) // self.world
        self.pending = unread[lo:hi]
        self.pending_taken = 0
        self.epoch, self.taken, self.yielded = frontier, 0, 0
        self.draws = sum(int(old["draws"]) for old in states)  # only seeds the buffer's draws
        self.stray = sum(int(old["stray"]) for r, old in enumerate(states) if r % self.world == self.rank)
        self.empty = False
        self.buffer = []
        self._it, self._at = None, None


def stream_specs(census: InputCensus, *, input: int, token_space_id: str) -> list[StreamSpec]:
    """The streams of one input: one per modality it holds (every rank gets a share of each)."""
    specs = []
    for m in MODALITIES:
        by_shard = census.positions.get(m, {})
        refs = tuple(r for r in census.refs if by_shard.get(r.name))
        if not refs:
            continue
        specs.append(StreamSpec(input=input, out=census.out, token_space_id=token_space_id, modality=m, refs=refs,
                                positions=census.positions, samples=sum(len(by_shard[r.name]) for r in refs)))
    return specs


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
        shuffle_buffer: int | None = None,
        prefetch: PrefetchLimits | None = None,
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
        shuffle_buffer = cfg.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        self.streams: dict[str, ModalityStream] = {}
        self.censuses: list[InputCensus] = []
        # One read-ahead per rank, shared by its streams: at most `limits.shards` ranges / `limits.bytes` held.
        limits = DEFAULT_LIMITS if prefetch is None else prefetch
        self.prefetcher = ShardPrefetcher(limits) if limits.shards > 0 and any(is_url(i["out"]) for i in inputs) else None
        for k, (inp, split) in enumerate(zip(inputs, self.splits)):
            # Fail fast (token space of every shard, from the indexes) exactly as a ShardReader does.
            refs = ShardReader(inp["out"], expected_token_space=inp["token_space_id"], split=split).refs
            census = input_census(inp["out"], split, refs=refs)
            self.censuses.append(census)
            for spec in stream_specs(census, input=k, token_space_id=inp["token_space_id"]):
                self.streams[spec.key] = ModalityStream(spec, seed=cfg.seed, rank=rank, world_size=world_size,
                                                        buffer_size=shuffle_buffer, shape=census.shape,
                                                        prefetcher=self.prefetcher)
        self.scheduler = TaskScheduler(cfg.mix, seed=cfg.seed, rank=rank)
        self.sources = self._sources()
        self.turn = {t: 0 for t in TASKS}
        self.inputs = InputMixer(cfg.data_weights, mix_by=cfg.mix_by, seed=cfg.seed, rank=rank) \
            if cfg.data_weights is not None else None
        # Samples and tokens (media + captions) read per input by this object: the trainer logs their growth per
        # step (metrics.jsonl "inputs"). Counters for the log only, not resume state.
        self.samples_read = [0] * len(inputs)
        self.tokens_read = [0] * len(inputs)
        self.failures = {t: 0 for t in TASKS}  # consecutive draws of the task that gave no doc
        self.dropped: dict[str, str] = {}  # task -> why this rank stopped training it (runtime)
        self.packer = Packer(seq_len=cfg.seq_len, pad_id=sp.pad)
        self.stats = SeqStats()
        self._said: set[str] = set()
        # Called with (sample, epoch) for every sample handed to sequence building (tests, tools).
        self.on_sample: Callable[[Sample, int], None] | None = None
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
        key = self._pick_source(task)
        stream = self.streams[key]
        item = stream.next()
        if item is None:  # a whole epoch of this stream held none of its modality on this rank
            self._drop_source(key)
            return []
        sample, epoch = item
        self.samples_read[stream.spec.input] += 1
        self.tokens_read[stream.spec.input] += len(sample.tokens) + len(sample.text)
        if self.on_sample is not None:
            self.on_sample(sample, epoch)
        if self.inputs is not None:
            self.inputs.count(stream.spec.input, sample)
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

    def _pick_source(self, task: str) -> str:
        """The stream a draw of `task` reads: without --data-weights the task's streams take turns;
        with them, the input furthest behind its weight (InputMixer), then that input's streams of
        the task in turn."""
        keys = self.sources[task]
        if self.inputs is None:
            key = keys[self.turn[task] % len(keys)]
            self.turn[task] += 1
            return key
        by_input: dict[int, list[str]] = {}
        for key in keys:
            by_input.setdefault(self.streams[key].spec.input, []).append(key)
        k = self.inputs.choose(sorted(by_input))
        input_keys = by_input[k]
        key = input_keys[self.inputs.turn(task, k) % len(input_keys)]
        return key

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
    # Every key of a rank's saved data state, in the order it is written.
    STATE_KEYS = ("format", "version", "inputs", "splits", "rank", "world_size", "streams", "scheduler_draws", "turn",
                  "failures", "inputs_mix", "dropped", "sources", "packer", "stats")

    def state_dict(self) -> dict:
        return in_declared_order(self.STATE_KEYS, {
            "format": STATE_FORMAT, "version": STATE_VERSION, "inputs": self.names, "splits": self.splits,
            "rank": self.rank, "world_size": self.world_size,
            "streams": {k: s.state_dict() for k, s in self.streams.items()},
            "scheduler_draws": self.scheduler.draws, "turn": dict(self.turn), "failures": dict(self.failures),
            "inputs_mix": self.inputs.state_dict() if self.inputs is not None else None,
            "dropped": dict(self.dropped), "sources": {t: list(v) for t, v in self.sources.items()},
            "packer": self.packer.state_dict(), "stats": self.stats.to_dict()})

    def _check_compatible(self, state: Mapping[str, Any], *, place: tuple[int, int] | None = None) -> None:
        """Refuse a saved data state this run cannot continue, naming the flag that differs: its format and
        version, its inputs, splits and streams, --data-weights, and whose state it is. `place` None: an
        exact resume, the state must be this worker's (rank and world size); (r, old world) for an elastic
        one, the state must be rank r's of the old world. Every stream checks its own (ModalityStream)."""
        what = "data state" if place is None else f"data state of rank {place[0]}"
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise TrainError(f"{what} is not a {STATE_FORMAT} v{STATE_VERSION} state (an older uti wrote it?); "
                             "resume with the uti version that wrote the checkpoint, or start a new --out")
        check_keys(state, self.STATE_KEYS, what=what)
        if list(state["inputs"]) != self.names or list(state["splits"]) != self.splits \
                or set(state["streams"]) != set(self.streams):
            raise TrainError(f"{what} was saved for inputs {state['inputs']} (splits {state['splits']}, streams "
                             f"{sorted(state['streams'])}); this run has {self.names} ({self.splits}, "
                             f"{sorted(self.streams)}): resume with the same --data and --split in the same order")
        saved_at = (int(state["rank"]), int(state["world_size"]))
        if place is None and saved_at != (self.rank, self.world_size):
            raise TrainError(f"data state is of rank {state['rank']} of {state['world_size']}, this worker is rank "
                             f"{self.rank} of {self.world_size}; resume with the same --num-workers")
        if place is not None and saved_at != place:
            raise TrainError(f"data states of ranks 0..{place[1] - 1} are needed for an elastic resume; got rank "
                             f"{state['rank']} of {state['world_size']} in place {place[0]}")
        if (state.get("inputs_mix") is None) != (self.inputs is None):
            raise TrainError("data state was saved " + ("without" if self.inputs is not None else "with")
                             + " --data-weights; resume with the run's --data-weights")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_compatible(state)
        for k, s in self.streams.items():
            s.load_state_dict(state["streams"][k])
        self.scheduler.draws = int(state["scheduler_draws"])
        if self.inputs is not None:
            self.inputs.load_state_dict(state["inputs_mix"])
        self.turn = {t: int(state["turn"].get(t, 0)) for t in TASKS}
        self.failures = {t: int(state["failures"].get(t, 0)) for t in TASKS}
        self.dropped = {str(t): str(r) for t, r in state["dropped"].items()}
        self.sources = {str(t): [str(k) for k in v] for t, v in state["sources"].items()}
        self.packer.load_state_dict(state["packer"])
        self.stats = SeqStats.from_dict(state["stats"])

    def load_elastic(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Continue from the data states of all ranks of a run with another --num-workers (elastic
        resume): every stream deals out what the old ranks left unread of their epochs (their
        shuffle buffers included) in equal shares, then continues with fresh epochs; the docs the
        old packers held go round-robin to the new ranks. Nothing of an epoch is skipped or read
        twice (beyond the padding rule). Batches differ from an uninterrupted run's (other ranks)."""
        old_world = len(states)
        for r, state in enumerate(states):
            self._check_compatible(state, place=(r, old_world))
        for key, stream in self.streams.items():
            stream.load_elastic([old["streams"][key] for old in states])
        taken_over = _merged(states, self.rank, self.world_size)
        self.scheduler.draws = sum(int(old["scheduler_draws"]) for old in states)
        self.turn = {t: sum(int(old["turn"].get(t, 0)) for old in taken_over) for t in TASKS}
        if self.inputs is not None:
            self.inputs.load_state_dict(states[0]["inputs_mix"])  # checks the weights
            self.inputs.done = [sum(int(old["inputs_mix"]["done"][k]) for old in taken_over)
                                for k in range(len(self.names))]
            self.inputs.samples = [sum(int(old["inputs_mix"]["samples"][k]) for old in taken_over)
                                   for k in range(len(self.names))]
            self.inputs.draws = sum(int(old["inputs_mix"]["draws"]) for old in states)
        total = SeqStats()
        for old in taken_over:
            part = SeqStats.from_dict(old["stats"])
            for f in SeqStats.FIELDS:
                setattr(total, f, getattr(total, f) + getattr(part, f))
            total.tasks.update(part.tasks)
        self.stats = total
        docs = []
        for old in states:
            packer = Packer(seq_len=self.cfg.seq_len, pad_id=self.sp.pad)
            packer.load_state_dict(old["packer"])
            docs += packer.pending_docs()
        for doc in docs[self.rank::self.world_size]:
            self.packer.add(doc)


def _merged(states: Sequence[Mapping[str, Any]], rank: int, world: int) -> list[Mapping[str, Any]]:
    """The old ranks whose counters this new rank takes over (old rank r goes to r % world), so the
    counters summed over ranks stay what they were."""
    return [old for r, old in enumerate(states) if r % world == rank]


def batch_checksum(batch: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a batch's IDs and loss mask: lets tests (and people) compare data positions."""
    crc = zlib.crc32(np.ascontiguousarray(batch["input_ids"]).tobytes())
    return zlib.crc32(np.ascontiguousarray(batch["targets"]).tobytes(), crc)


@dataclasses.dataclass(frozen=True)
class HeldoutText:
    """The drift check's text-only docs and where they come from."""

    docs: list[Doc]
    split: str | None  # None: OUT has no complete shards
    held_out: bool  # False: no split other than the training one exists, so these are training captions
    not_held_out: str | None = None  # why they are not held out (console and text_drift.json)


def heldout_text_docs(out: str, *, token_space_id: str, train_split: str, sp: Specials, seq_len: int,
                      limit: int) -> HeldoutText:
    """Text-only docs of up to `limit` captions for the drift check, from a split other than the
    training one (held out); from the training split, marked not held out, when OUT has no other.
    `train_split` is the input's resolved split (train.census.resolve_split), so an aliased training
    split (Clotho's development for --split train) is never taken for held-out data."""
    split = heldout_split(out, train_split)
    held_out = split != train_split
    why = None if held_out else f"{out} has no split other than the training split {train_split}"
    if split is None or limit == 0:
        return HeldoutText([], split, held_out, why)
    docs: list[Doc] = []
    for sample in ShardReader(out, expected_token_space=token_space_id, split=split):
        captions = split_captions(sample.text, sample.meta.get("caption_token_lengths", []),
                                  what=f"sample {sample.meta.get('id')!r}")
        for cap in captions:
            doc = build_doc("text", media=None, caption=cap, sp=sp)
            if 0 < len(cap) and len(doc) <= seq_len:
                docs.append(doc)
            if len(docs) >= limit:
                return HeldoutText(docs, split, held_out, why)
    return HeldoutText(docs, split, held_out, why)
