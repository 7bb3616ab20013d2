"""Check 11: stream a few batches through the training reader (`ShardReader`) and a torch DataLoader.

The collate function pads variable-length samples the way a training loop would, and every batch
is checked against the samples it was built from, so a reader or collation bug shows up here
rather than hours into a training run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def pad_collate(samples: list, *, pad_id: int) -> dict[str, Any]:
    """Samples -> padded int64 tensors (B, max_len) for media and text, with lengths and masks."""
    import torch

    out: dict[str, Any] = {"keys": [s.key for s in samples], "ids": [s.meta["id"] for s in samples],
                           "shards": [f"{s.split}/{s.shard}" for s in samples]}
    for name in ("tokens", "text"):
        arrays = [getattr(s, name) for s in samples]
        lengths = torch.tensor([a.size for a in arrays], dtype=torch.int64)
        width = int(lengths.max()) if len(arrays) else 0
        batch = torch.full((len(arrays), width), pad_id, dtype=torch.int64)
        for i, a in enumerate(arrays):
            batch[i, : a.size] = torch.from_numpy(a.astype(np.int64))
        out[name] = batch
        out[f"{name}_lengths"] = lengths
        out[f"{name}_mask"] = torch.arange(width)[None, :] < lengths[:, None]
    return out


def loader_smoke(refs: list, space_id: str, *, batches: int, batch_size: int, pad_id: int) -> dict[str, Any]:
    """Read up to `batches` batches; returns counts and throughput, or `failure` (shard, key, id, detail)."""
    import functools

    from torch.utils.data import DataLoader

    from sharding.reader import ShardReader
    from uti.errors import UTIError

    t0 = time.perf_counter()
    result: dict[str, Any] = {"batches": 0, "samples": 0, "tokens": 0, "shards": len(refs)}
    reader = ShardReader(refs, expected_token_space=space_id)
    # The same samples again, straight from the reader, so each batch can be checked against them.
    reference = iter(ShardReader(refs, expected_token_space=space_id))
    loader = DataLoader(reader, batch_size=batch_size, num_workers=0,
                        collate_fn=functools.partial(pad_collate, pad_id=pad_id))
    where: dict[str, Any] = {"shard": None, "key": None, "id": None}
    try:
        for batch in loader:
            for i, key in enumerate(batch["keys"]):
                s = next(reference)
                where = {"shard": batch["shards"][i], "key": key, "id": batch["ids"][i]}
                if s.key != key:
                    return {**result, "failure": {**where, "detail": f"batch order differs from the reader: expected {s.key}"}}
                for name in ("tokens", "text"):
                    n = int(batch[f"{name}_lengths"][i])
                    row = batch[name][i]
                    arr = getattr(s, name)
                    if n != arr.size or not np.array_equal(row[:n].numpy(), arr.astype(np.int64)) \
                            or bool((row[n:] != pad_id).any()) or int(batch[f"{name}_mask"][i].sum()) != n:
                        return {**result, "failure": {**where, "detail": f"collated {name} differ from the sample"}}
                result["tokens"] += int(batch["tokens_lengths"][i] + batch["text_lengths"][i])
            result["batches"] += 1
            result["samples"] += len(batch["keys"])
            if result["batches"] >= batches:
                break
    except UTIError as exc:
        return {**result, "failure": {**where, "detail": f"reader refused the data after this sample: {exc}"}}
    seconds = time.perf_counter() - t0
    result.update(seconds=round(seconds, 3), samples_per_s=round(result["samples"] / seconds, 1) if seconds else None)
    return result
