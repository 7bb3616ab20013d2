"""The per-worker input pipeline: shard readers -> task docs -> packed batches, resumable.

Each Ray Train worker streams its own share of every input (`ShardReader(rank=world_rank,
world_size=world_size)`: whole shards per rank, per-epoch seeded shard shuffle), reading in the
training process itself: the tars are small sequential reads and sequence building is cheap numpy,
so no DataLoader worker processes are needed (bench: the pipeline runs far faster than the tiny
model trains). Inputs are interleaved one sample at a time, round robin; an input whose epoch ends
starts its next epoch, so training is bounded by --steps, not by epochs.

Resume state = every reader's state_dict + the round-robin turn + the packer's pending docs + the
counters, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from sharding.format import list_shards
from sharding.reader import Sample, ShardReader
from train.config import TrainConfig, TrainError
from train.sequences import Doc, Packer, SeqStats, Specials, build_doc, collate, sample_to_docs, split_captions

log = logging.getLogger(__name__)

STATE_FORMAT = "uti.train_stream"


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
    ):
        """inputs: [{"out": OUT, "token_space_id": ID}] -- each input is read with its own token
        space ID (the driver already compared it with the run's, or recorded the override)."""
        self.cfg = cfg
        self.sp = sp
        self.vocab_size = vocab_size
        self.rank = rank
        self.readers = [
            ShardReader(i["out"], expected_token_space=i["token_space_id"], split=cfg.split, rank=rank,
                        world_size=world_size, shuffle_seed=cfg.seed)
            for i in inputs
        ]
        self.names = [i["out"] for i in inputs]
        # A rank can get no shard of a small input; it then reads only the others.
        self.active = [k for k, r in enumerate(self.readers) if r.rank_shards()]
        if not self.active:
            raise TrainError(
                f"rank {rank} of {world_size} gets no shard of split {cfg.split!r} from any input "
                f"({', '.join(self.names)}): every worker needs at least one shard; use fewer --num-workers or "
                "re-tokenize with smaller shards"
            )
        self._iters: dict[int, Iterator[Sample]] = {}
        self.turn = 0
        self.packer = Packer(seq_len=cfg.seq_len, pad_id=sp.pad)
        self.stats = SeqStats()
        self._since_doc = 0

    # ---- samples ----------------------------------------------------------------------------------
    def _next_sample(self) -> tuple[Sample, int]:
        k = self.active[self.turn % len(self.active)]
        self.turn = (self.turn + 1) % len(self.active)
        reader = self.readers[k]
        for _ in range(2):  # at most one epoch rollover per call
            it = self._iters.get(k)
            if it is None:
                it = self._iters[k] = iter(reader)
            try:
                sample = next(it)
                return sample, reader.epoch  # the epoch is still the sample's until the iterator ends
            except StopIteration:
                self._iters.pop(k, None)  # the reader moved on to the next epoch
        raise TrainError(f"{self.names[k]}: rank {self.rank} has shards but they yield no samples")

    def _fill(self) -> None:
        """Read samples until the packer has a closed row."""
        # A safety net against looping forever, not a tuning knob: ranks change shards every epoch.
        budget = 10 * sum(ref.num_samples for r in self.readers for ref in r.refs) + 10
        while not self.packer.ready:
            sample, epoch = self._next_sample()
            docs = sample_to_docs(tokens=sample.tokens, text=sample.text, meta=sample.meta, sp=self.sp,
                                  mix=self.cfg.mix, seq_len=self.cfg.seq_len, overlong=self.cfg.overlong,
                                  seed=self.cfg.seed, epoch=epoch, stats=self.stats)
            for doc in docs:
                if int(doc.ids.max()) >= self.vocab_size:
                    raise TrainError(f"{sample.shard}: sample {sample.meta.get('id')!r} has token ID {int(doc.ids.max())} "
                                     f">= the run's vocab size {self.vocab_size} (an overridden token-space mismatch?)")
                self.packer.add(doc)
            self._since_doc = 0 if docs else self._since_doc + 1
            if self._since_doc > budget:
                raise TrainError(
                    f"rank {self.rank}: no sample of split {self.cfg.split!r} gives a training sequence "
                    f"(stats: {self.stats.to_dict()}); check --mix against the modalities in the data, captions, "
                    "and --seq-len / --overlong"
                )

    def next_batch(self) -> dict[str, np.ndarray]:
        rows = []
        for _ in range(self.cfg.batch_size):
            self._fill()
            rows.append(self.packer.pop_row())
        return collate(rows)

    # ---- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "version": 1, "readers": [r.state_dict() for r in self.readers],
                "turn": self.turn, "packer": self.packer.state_dict(), "stats": self.stats.to_dict(),
                "inputs": self.names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or len(state.get("readers", ())) != len(self.readers):
            raise TrainError(f"data state is not a {STATE_FORMAT} state for {len(self.readers)} input(s); resume "
                             "with the same --data inputs in the same order")
        for reader, rs in zip(self.readers, state["readers"]):
            reader.load_state_dict(rs)
        self._iters = {}
        self.turn = int(state["turn"])
        self.packer.load_state_dict(state["packer"])
        self.stats = SeqStats.from_dict(state["stats"])


def batch_checksum(batch: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a batch's IDs and loss mask: lets tests (and people) compare data positions."""
    crc = zlib.crc32(np.ascontiguousarray(batch["input_ids"]).tobytes())
    return zlib.crc32(np.ascontiguousarray(batch["targets"]).tobytes(), crc)


def heldout_text_docs(out: str, *, token_space_id: str, train_split: str, sp: Specials, seq_len: int,
                      limit: int) -> tuple[list[Doc], str | None]:
    """Text-only docs of up to `limit` captions for the drift check, preferably from a split other
    than the training one (held out); falls back to the training split when OUT has no other."""
    splits = sorted({r.split for r in list_shards(out)})
    others = [s for s in splits if s != train_split]
    preferred = [s for s in ("valid", "validation", "val", "test", "eval", "evaluation") if s in others]
    split = (preferred or others or [train_split])[0] if splits else None
    if split is None or limit == 0:
        return [], None
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
