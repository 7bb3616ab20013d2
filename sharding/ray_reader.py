"""Shards as a Ray Data dataset, read through our validating `read_shard`.

Not `ray.data.read_webdataset`: its decoders would accept any member (pickles included) and it
knows nothing of our header or token space. Instead the shard list becomes a tiny dataset (one row
and one block per shard) and `flat_map` streams each shard with `read_shard`, so every check of
the streaming reader applies on the Ray workers too.

Ray is imported here only; the caller initialises Ray (`ray.init(...)`) before calling.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

from sharding.errors import ShardError, ShardTokenSpaceMismatch
from sharding.format import DEFAULT_MAX_MEMBER_BYTES, ShardRef, is_hex64, list_shards
from sharding.reader import read_shard
from uti.errors import TokenSpaceMismatch
from uti.token_space import TokenSpace, canonical_json, require_same

ROW_COLUMNS = ("key", "tokens", "text", "meta_json", "shard", "split")


def _shard_rows(expected: TokenSpace | str | None, max_member_bytes: int) -> Callable[[dict], Iterator[dict]]:
    def rows(item: dict) -> Iterator[dict]:
        index = json.loads(item["index_json"])
        for s in read_shard(item["tar_path"], expected_token_space=expected, index=index, max_member_bytes=max_member_bytes):
            yield {
                "key": s.key, "tokens": s.tokens, "text": s.text,
                # JSON text rather than a struct column: meta fields differ per modality.
                "meta_json": canonical_json(s.meta).decode("utf-8"),
                "shard": s.shard, "split": s.split,
            }

    return rows


def read_ray_dataset(
    out_dir: str | os.PathLike,
    *,
    expected_token_space: TokenSpace | str | None,
    split: str | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
) -> Any:
    """A `ray.data.Dataset` of rows {key, tokens, text, meta_json, shard, split} over the complete
    shards of OUT (optionally one split), in shard order. tokens/text are uint32 arrays."""
    import ray.data

    if isinstance(expected_token_space, str) and not is_hex64(expected_token_space):
        raise ShardError(f"expected_token_space must be a TokenSpace or its full 64-hex ID, got {expected_token_space!r}")
    refs: list[ShardRef] = list_shards(out_dir, split)
    if not refs:
        raise ShardError(
            f"{os.fspath(out_dir)}: no complete shards{f' for split {split!r}' if split else ''}; run `uti tokenize` "
            "or check `find_orphans` for shards without a valid index"
        )
    ids = {r.index["token_space_id"] for r in refs}
    if len(ids) > 1:
        raise ShardError(f"{os.fspath(out_dir)}: shards of {len(ids)} token spaces must not be mixed")
    (found,) = ids
    if expected_token_space is None:
        expected_token_space = found  # pin one token space across all shards
    try:  # fail fast from the indexes, on the driver, instead of inside a Ray task
        require_same(expected_token_space, found, what=f"shards in {os.fspath(out_dir)}")
    except TokenSpaceMismatch as exc:
        raise ShardTokenSpaceMismatch(str(exc), expected_id=exc.expected_id, found_id=exc.found_id, changes=exc.changes) from None
    items = [{"tar_path": r.tar_path, "index_json": canonical_json(dict(r.index)).decode("utf-8")} for r in refs]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.flat_map(_shard_rows(expected_token_space, max_member_bytes))


__all__ = ["read_ray_dataset", "ROW_COLUMNS"]
