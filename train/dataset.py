"""`uti train`'s input pipeline as a PyTorch IterableDataset, for people with their own training loop.

    from torch.utils.data import DataLoader
    from train.dataset import TokenBatches

    ds = TokenBatches(["data/tok"], seq_len=1024, batch_size=8, data_weights=None, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=2)  # batches come packed: batch_size=None
    for step, batch in zip(range(1000), loader):
        ds.record(batch)  # what the main process consumed (for state_dict with DataLoader workers)
        loss = model(batch["input_ids"], batch["position_ids"], batch["targets"])
    torch.save(ds.state_dict(), "data_state.pt")  # plain data: loads with weights_only=True

Every (rank, DataLoader worker) pair is one reader of train.stream.BatchStream: with R ranks
(torch.distributed, or rank/world_size given) and W workers, worker w of rank r reads as rank
r * W + w of R * W, so partitioning (equal sample-level shares), task mix, --data-weights mixing,
shuffling and the token-space check are exactly `uti train`'s. The dataset is endless (streams cycle
their epochs); the loop decides the number of steps.

Resume: without DataLoader workers `state_dict()` reads the live stream. With workers, every batch
carries its worker's stream state after that batch ("data_state"); `record(batch)` keeps the latest
per worker, and `load_state_dict` hands each worker its own, so the same samples follow (no skip, no
repeat). Only the interleaving of workers can differ: DataLoader starts again at worker 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.utils.data

from train.census import resolve_splits
from train.config import DEFAULT_SHUFFLE_BUFFER, TrainConfig, TrainError, absolute
from train.runner import load_input_space
from train.sequences import Specials
from train.stream import BatchStream
from uti.errors import UTIError
from uti.token_space import TokenSpace, require_same

STATE_FORMAT = "uti.token_batches"
STATE_VERSION = 1


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclasses.dataclass
class _Worker:
    index: int
    count: int


def _worker() -> _Worker | None:
    info = torch.utils.data.get_worker_info()
    return None if info is None else _Worker(index=info.id, count=info.num_workers)


class TokenBatches(torch.utils.data.IterableDataset):
    """Packed training batches (dicts of int64/bool tensors of shape (batch_size, seq_len): input_ids,
    targets, task_ids, position_ids) from tokenized dataset folders."""

    def __init__(
        self,
        data: str | Sequence[str],
        *,
        seq_len: int = 512,
        batch_size: int = 4,
        mix: Mapping[str, float] | None = None,
        split: str = "train",
        data_weights: Sequence[float] | None = None,
        mix_by: str = "samples",
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        overlong: str = "drop",
        seed: int = 0,
        token_space: TokenSpace | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        outs = tuple(absolute(d) for d in ([data] if isinstance(data, str) else data))
        extra = {} if mix is None else {"mix": dict(mix)}
        # TrainConfig checks every value (messages name the `uti train` flag of the same meaning).
        self.cfg = TrainConfig(data=outs, out="(TokenBatches)", seq_len=seq_len, batch_size=batch_size, split=split,
                               data_weights=None if data_weights is None else tuple(float(w) for w in data_weights),
                               mix_by=mix_by, shuffle_buffer=shuffle_buffer, overlong=overlong, seed=seed, **extra)
        spaces = [load_input_space(o) for o in outs]
        self.space = token_space if token_space is not None else spaces[0]
        for out, space in zip(outs, spaces):
            try:
                require_same(self.space, space, what=f"TokenBatches input {out}")
            except UTIError as exc:
                raise TrainError(str(exc)) from None
        self.splits = resolve_splits(outs, split)
        self.inputs = [{"out": o, "token_space_id": s.id, "split": sp} for o, s, sp in zip(outs, spaces, self.splits)]
        given = (rank, world_size)
        self.rank, self.world_size = _distributed() if given == (None, None) else (int(rank or 0), int(world_size or 1))
        if not 0 <= self.rank < self.world_size:
            raise TrainError(f"TokenBatches: need 0 <= rank < world_size, got rank {self.rank} of {self.world_size}")
        self._live: BatchStream | None = None
        self._states: dict[int, dict] = {}  # DataLoader worker -> its stream state after its last recorded batch
        self._workers: int | None = None

    def stream(self, worker: int = 0, workers: int = 1) -> BatchStream:
        """The BatchStream one DataLoader worker (of `workers`) of this rank reads."""
        return BatchStream(self.inputs, cfg=self.cfg, sp=Specials.from_space(self.space),
                           vocab_size=self.space.vocab_size, rank=self.rank * workers + worker,
                           world_size=self.world_size * workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = _worker()
        w, n = (0, 1) if info is None else (info.index, info.count)
        if self._workers is not None and self._workers != n:
            raise TrainError(f"TokenBatches: the state was saved with {self._workers} DataLoader worker(s), this "
                             f"loader has {n}; resume with the same num_workers")
        stream = self.stream(w, n)
        if w in self._states:
            stream.load_state_dict(self._states[w])
        if info is None:  # the live stream is the state from now on
            self._live, self._states, self._workers = stream, {}, None
        while True:
            batch: dict[str, Any] = {k: torch.from_numpy(v) for k, v in stream.next_batch().items()}
            if info is not None:  # the main process cannot see this worker's stream: the state travels along
                batch["data_state"] = {"worker": w, "workers": n, "state": stream.state_dict()}
            yield batch

    def record(self, batch: Mapping[str, Any]) -> None:
        """Note a batch the main process consumed (needed for state_dict with DataLoader workers; a
        no-op without them)."""
        ds = batch.get("data_state")
        if ds is None:
            return
        self._workers = int(ds["workers"])
        self._states[int(ds["worker"])] = ds["state"]

    def state_dict(self) -> dict:
        if self._live is not None and not self._states:
            return {"format": STATE_FORMAT, "version": STATE_VERSION, "workers": 1, "states": {"0": self._live.state_dict()}}
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "workers": self._workers or 1,
                "states": {str(w): s for w, s in sorted(self._states.items())}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise TrainError(f"TokenBatches.load_state_dict: not a {STATE_FORMAT} v{STATE_VERSION} state")
        self._workers = int(state["workers"])
        self._states = {int(w): s for w, s in state["states"].items()}
        self._live = None


__all__ = ["TokenBatches"]
