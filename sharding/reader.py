"""Read shards (format: see sharding.format): a validating streaming reader and a resumable,
rank- and worker-aware iterable over many shards.

Trust model: a shard is untrusted input. The reader streams the tar (never extracts to disk),
refuses any member that is not exactly what our writer produces -- before reading its payload --
never unpickles anything, checks the header against the expected token space, and raises
ShardError rather than skipping anything it does not like. The parsing itself is sharding.parser,
shared with `uti verify`; the reader's error policy is `raise_problem`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from sharding.errors import ShardError, ShardTokenSpaceMismatch
from sharding.tario import TrackingReader
from sharding.format import (
    DEFAULT_MAX_MEMBER_BYTES, META_REQUIRED, REGENERATE, TAR_SUFFIX, ShardRef, index_modalities, is_hex64,
    list_shards, sample_offsets, url_to_fs,
)
from sharding.parser import TarBroken, header_member, iter_members, iter_samples, parse_header, parse_ids, raise_problem
from uti.errors import TokenSpaceError, TokenSpaceMismatch
from uti.token_space import TokenSpace, canonical_json, require_same, sha256_hex

try:  # torch is optional for the format; with it the reader plugs into DataLoader workers
    import torch.utils.data as _torch_data

    _IterableBase: type = _torch_data.IterableDataset
except ImportError:  # pragma: no cover - torch is a dependency of the project
    _torch_data = None
    _IterableBase = object

log = logging.getLogger(__name__)

STATE_FORMAT = "uti.reader_state"
STATE_VERSION = 1


@dataclass(frozen=True, eq=False)
class Sample:
    """One sample of a shard. eq=False: arrays do not compare to a single bool.

    index_in_shard is its position in the shard; shard_pos its position in a ShardReader's
    per-epoch shard list (-1 outside a ShardReader). Both exist so a consumer can report progress
    back with ShardReader.record() when samples arrive through DataLoader worker processes.
    """

    key: str
    tokens: np.ndarray
    text: np.ndarray
    meta: dict
    shard: str
    split: str
    index_in_shard: int = -1
    shard_pos: int = -1


# ---- checks ------------------------------------------------------------------------------------------
def _fail(where: str, problem: str, fix: str = REGENERATE) -> ShardError:
    return ShardError(f"{where}: {problem}; {fix}")


def _load_ids(data: bytes, vocab_size: int, where: str) -> np.ndarray:
    """A uint32 1-D .npy (sharding.parser.parse_ids: the header is checked before numpy touches the data)."""
    array, why = parse_ids(data)
    if array is None:
        raise _fail(where, why)
    if array.size and int(array.max()) >= vocab_size:
        raise _fail(where, f"token ID {int(array.max())} >= vocab size {vocab_size} of the shard's token space")
    return array.copy()  # a writable array of its own, as np.load gave: consumers may write to it


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    # ValueError: JSONDecodeError, and ints over Python's digit limit; RecursionError: absurd nesting.
    except (ValueError, RecursionError) as exc:
        raise _fail(where, f"not valid UTF-8 JSON ({exc})") from None


def _check_header(
    data: bytes, where: str, stem: str | None, expected: TokenSpace | str | None,
) -> tuple[dict, TokenSpace]:
    header = parse_header(data, where, raise_problem)  # structure, canonical form, token-space hash
    claimed = header["token_space_id"]
    try:
        found = TokenSpace.from_dict(header["token_space"], where=f"{where}: header token_space")
    except (TokenSpaceError, TypeError, ValueError) as exc:  # a crafted header can hold any JSON types
        raise _fail(where, f"header token space is invalid ({exc})") from None
    if stem is not None and header["shard"] != stem:
        raise _fail(where, f"header says shard {header['shard']!r} but the file is named {stem!r}",
                    "keep shard files under the names they were written with")
    if expected is not None:
        try:
            # With a TokenSpace on both sides require_same also reports what changed.
            require_same(expected, found if isinstance(expected, TokenSpace) else claimed, what=f"shard {where}")
        except TokenSpaceMismatch as exc:
            raise ShardTokenSpaceMismatch(
                f"{where}: {exc}", expected_id=exc.expected_id, found_id=exc.found_id, changes=exc.changes,
            ) from None
    return header, found


def _check_meta(meta: Any, key: str, header: dict, where: str) -> dict:
    if not isinstance(meta, dict):
        raise _fail(where, f"{key}.json is not a JSON object")
    missing = [k for k in META_REQUIRED if k not in meta]
    if missing:
        raise _fail(where, f"{key}.json lacks {', '.join(missing)}")
    if not isinstance(meta["id"], str) or not meta["id"]:
        raise _fail(where, f"{key}.json id must be a non-empty string")
    if meta["token_space_id"] != header["token_space_id"]:
        raise _fail(where, f"sample token_space_id {str(meta['token_space_id'])[:16]!r} differs from the header's "
                           f"{header['token_space_id'][:16]}; tokens of two token spaces are mixed in one shard")
    if meta["split"] != header["split"]:
        raise _fail(where, f"sample split {meta['split']!r} differs from the header's {header['split']!r}")
    return meta


def _check_against_index(index: Mapping[str, Any], i: int, key: str, meta: dict, tokens: np.ndarray, text: np.ndarray, where: str) -> None:
    n = index["num_samples"]
    if i >= n:
        raise _fail(where, f"the tar holds more samples than its index's num_samples={n}")
    if (key, meta["id"], len(tokens), len(text)) != (
        index["keys"][i], index["ids"][i], index["token_counts"][i], index["text_token_counts"][i]
    ):
        raise _fail(where, f"sample #{i} ({key}, {meta['id']!r}) disagrees with the index entry "
                           f"({index['keys'][i]}, {index['ids'][i]!r}) or its token counts")
    modalities = index_modalities(index)
    if modalities is not None and modalities[i] != meta["modality"]:
        raise _fail(where, f"sample #{i} ({meta['id']!r}) is {meta['modality']!r} in its meta, "
                           f"{modalities[i]!r} in the index")


def sample_modalities(ref: ShardRef) -> list[str]:
    """Each sample's modality, as its meta has it: from the index (version 3), else read from the
    sample metas of the tar (an index written before it recorded them; the whole tar is read and
    checked). Never guessed from a token count."""
    found = index_modalities(ref.index)
    if found is not None:
        return list(found)
    return [str(s.meta["modality"]) for s in read_shard(ref.tar_path, expected_token_space=None, index=ref.index)]


# ---- one shard ---------------------------------------------------------------------------------------
def read_shard(
    tar_path: str | os.PathLike,
    *,
    expected_token_space: TokenSpace | str | None,
    index: Mapping[str, Any] | None = None,
    start: int = 0,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    source: Any = None,
) -> Iterator[Sample]:
    """Stream the samples of one shard, validating everything on the way.

    expected_token_space: the TokenSpace (mismatch message includes a diff) or its full ID; None
        accepts the shard's own token space (its header must still be self-consistent).
    index: the shard's index; when given, keys, IDs, counts, tar size and SHA-256 are checked
        against it (a mismatch in size/hash surfaces after the last sample).
    start: number of leading samples not to yield (resume, or a rank's share starting mid-shard).
        With a version 2 index (member offsets) and a seekable file, the reader reads the header,
        then seeks to sample `start`: the samples before it are never read, and the whole-file
        size/SHA-256 check is left out (it needs every byte); the samples read are still checked
        member by member and against their index entries. Otherwise (version 1 index, no index,
        or a stream that cannot seek) the leading samples are read and validated but not yielded.
    source: an open binary file of this tar to read instead of opening tar_path (training's read-ahead,
        sharding.prefetch.PrefetchedFile); it is closed here. The bytes and checks are the same.
    """
    path = os.fspath(tar_path)
    if isinstance(expected_token_space, str) and not is_hex64(expected_token_space):
        raise ShardError(f"{path}: expected_token_space must be a TokenSpace or its full 64-hex ID, got {expected_token_space!r}")
    base = posixpath.basename(path.rstrip("/"))
    stem = base[: -len(TAR_SUFFIX)] if base.endswith(TAR_SUFFIX) else None
    if source is not None:
        raw = source
    else:
        fs, fpath = url_to_fs(path)
        try:
            raw = fs.open(fpath, "rb")
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot open shard ({exc})") from exc
    with raw:
        offsets = sample_offsets(index) if index is not None and start > 0 else None
        seek_to = offsets[start] if offsets and start < len(offsets) and _seekable(raw) else None
        yield from _read_stream(raw, path, stem, expected_token_space, index, start, max_member_bytes, seek_to)


def _seekable(raw: Any) -> bool:
    try:
        return bool(raw.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _read_stream(raw: Any, where: str, stem: str | None, expected: TokenSpace | str | None,
                 index: Mapping[str, Any] | None, start: int, max_bytes: int,
                 seek_to: int | None = None) -> Iterator[Sample]:
    src = TrackingReader(raw, hash_bytes=index is not None and seek_to is None)
    try:
        header, space = _check_header(header_member(iter_members(src, max_bytes)), where, stem, expected)
        if index is not None:
            for field in ("token_space_id", "shard", "split"):
                if index[field] != header[field]:
                    raise _fail(where, f"index {field} {index[field]!r} differs from the header's {header[field]!r}")
        i = 0
        if seek_to is not None:
            # The header is checked; now jump to sample `start` and parse the tar from its member header on.
            try:
                raw.seek(seek_to)
            except (OSError, ValueError) as exc:
                raise _fail(where, f"cannot seek to sample {start} at byte {seek_to} given by the index ({exc})") from None
            src = TrackingReader(raw, hash_bytes=False)
            i = start
        for sample in _samples(iter_samples(iter_members(src, max_bytes)), where, header, space.vocab_size, index, i):
            i = sample.index_in_shard + 1
            if i > start:
                yield sample
    except TarBroken as exc:
        raise _fail(where, str(exc), exc.fix) from None
    except OSError as exc:  # a read error of the underlying file
        raise _fail(where, f"read error ({exc})") from None
    _check_end(src, where)
    if index is not None:
        if i != index["num_samples"]:
            raise _fail(where, f"the tar holds {i} samples, its index says {index['num_samples']}")
        if seek_to is not None:  # read from the middle: the size still tells, the hash needs every byte
            if seek_to + src.pos != index["tar_bytes"]:
                raise _fail(where, f"tar is {seek_to + src.pos} bytes, its index records {index['tar_bytes']} "
                                   "(modified after writing)")
        elif src.pos != index["tar_bytes"] or src.sha.hexdigest() != index["tar_sha256"]:
            raise _fail(where, f"tar is {src.pos} bytes with SHA-256 {src.sha.hexdigest()[:16]}, its index "
                               f"records {index['tar_bytes']} bytes and {index['tar_sha256'][:16]} (modified after writing)")


def _samples(samples: Iterator[tuple[str, bytes, bytes, bytes]], where: str, header: dict, vocab: int,
             index: Mapping[str, Any] | None, i: int) -> Iterator[Sample]:
    """Each sample's payloads parsed and checked (meta, uniqueness, index entry), numbered from i."""
    seen_keys: set[str] = set()
    seen_ids: set[str] = set()
    for key, tokens_b, text_b, meta_b in samples:
        if key in seen_keys:
            raise _fail(where, f"duplicate sample key {key!r}")
        tokens = _load_ids(tokens_b, vocab, f"{where}: {key}.tokens.npy")
        text = _load_ids(text_b, vocab, f"{where}: {key}.text.npy")
        meta = _check_meta(_parse_json(meta_b, f"{where}: {key}.json"), key, header, f"{where}: sample {key}")
        if meta["id"] in seen_ids:
            raise _fail(where, f"sample id {meta['id']!r} appears twice")
        if index is not None:
            _check_against_index(index, i, key, meta, tokens, text, where)
        seen_keys.add(key)
        seen_ids.add(meta["id"])
        yield Sample(key=key, tokens=tokens, text=text, meta=meta, shard=header["shard"], split=header["split"],
                     index_in_shard=i)
        i += 1


def _check_end(src: TrackingReader, where: str) -> None:
    """A tar parser stops quietly at EOF or garbage; we insist on the zero blocks our writer emits."""
    try:
        problem = src.end_problem()
    except OSError as exc:
        raise _fail(where, f"read error at the end of the tar ({exc})") from None
    if problem:
        raise _fail(where, problem)


# ---- many shards -------------------------------------------------------------------------------------
def _worker() -> tuple[int, int]:
    info = _torch_data.get_worker_info() if _torch_data is not None else None
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardReader(_IterableBase):  # type: ignore[misc, valid-type]
    """Samples of many shards: deterministic order, split across ranks and DataLoader workers,
    optional per-epoch shard shuffle, resumable mid-epoch.

    Per epoch the shard list (sorted by split, name) is permuted with (shuffle_seed, epoch) when a
    seed is given; rank r takes positions r::world_size of it (its "rank list"); inside a DataLoader
    worker w of W takes rank-list positions w::W. Completing an iteration outside DataLoader workers
    advances to the next epoch; with workers call set_epoch() each epoch (like DistributedSampler).

    Progress is counted per rank-list position. Iterating in this process updates it; samples that
    arrive through DataLoader worker processes must be reported with record(sample) for
    state_dict() to see them.
    """

    def __init__(
        self,
        out_dir_or_refs: str | os.PathLike | Iterable[ShardRef],
        *,
        expected_token_space: TokenSpace | str | None,
        split: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_seed: int | None = None,
        epoch: int = 0,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    ):
        if isinstance(out_dir_or_refs, (str, os.PathLike)):
            source = os.fspath(out_dir_or_refs)
            refs = list_shards(source, split)
        else:
            source = "the given shard list"
            refs = list(out_dir_or_refs)
            bad = [r for r in refs if not isinstance(r, ShardRef)]
            if bad:
                raise ShardError(f"ShardReader: expected ShardRef items (from list_shards), got {type(bad[0]).__name__}")
            refs = [r for r in refs if split is None or r.split == split]
        self.refs: list[ShardRef] = sorted(refs, key=lambda r: (r.split, r.name, r.tar_path))
        if not self.refs:
            raise ShardError(
                f"{source}: no complete shards{f' for split {split!r}' if split else ''}; run `uti tokenize` "
                "or check `find_orphans` for shards without a valid index"
            )
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ShardError(f"ShardReader: need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if world_size > len(self.refs):
            log.warning("world_size %d > %d shards in %s: some ranks get no data; write smaller shards",
                        world_size, len(self.refs), source)
        ids = sorted({r.index["token_space_id"] for r in self.refs})
        # one shard per token space, so the message names shards, not just the folder
        example = {i: next(r.tar_path for r in self.refs if r.index["token_space_id"] == i) for i in ids}
        if len(ids) > 1:
            raise ShardError(f"{source}: shards of {len(ids)} token spaces "
                             f"({', '.join(f'{i[:12]} e.g. {example[i]}' for i in ids)}) must not be mixed")
        if expected_token_space is None:
            expected_token_space = ids[0]  # still pin one space across all shards
        elif isinstance(expected_token_space, str) and not is_hex64(expected_token_space):
            raise ShardError(f"expected_token_space must be a TokenSpace or its full 64-hex ID, got {expected_token_space!r}")
        try:  # fail fast from the indexes, before any tar is opened
            require_same(expected_token_space, ids[0], what=f"shards in {source} (e.g. {example[ids[0]]})")
        except TokenSpaceMismatch as exc:
            raise ShardTokenSpaceMismatch(str(exc), expected_id=exc.expected_id, found_id=exc.found_id, changes=exc.changes) from None
        self.expected_token_space = expected_token_space
        self.split = split
        self.rank = rank
        self.world_size = world_size
        self.shuffle_seed = shuffle_seed
        self.epoch = int(epoch)
        self.max_member_bytes = max_member_bytes
        self._consumed: dict[int, int] = {}  # rank-list position -> samples delivered
        self._shards_sha256 = sha256_hex(canonical_json([[r.split, r.name, r.index["tar_sha256"]] for r in self.refs]))

    # ---- order ----------------------------------------------------------------------------------
    def rank_shards(self, epoch: int | None = None) -> list[ShardRef]:
        """This rank's shards for an epoch, in reading order."""
        epoch = self.epoch if epoch is None else epoch
        order = np.arange(len(self.refs))
        if self.shuffle_seed is not None:
            order = np.random.default_rng([int(self.shuffle_seed), int(epoch)]).permutation(len(self.refs))
        return [self.refs[i] for i in order[self.rank::self.world_size]]

    def num_samples(self, epoch: int | None = None) -> int:
        """Samples this rank reads in an epoch (ranks can differ when shards are uneven)."""
        return sum(r.num_samples for r in self.rank_shards(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shard permutation); changing it starts the epoch from its beginning."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._consumed = {}

    # ---- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sample]:
        shards = self.rank_shards()
        worker, workers = _worker()
        if workers > 1 and worker == 0 and len(shards) < workers:
            log.warning("%d DataLoader workers but rank %d has %d shards: some workers stay idle",
                        workers, self.rank, len(shards))
        for pos in range(worker, len(shards), workers):
            ref = shards[pos]
            done = self._consumed.get(pos, 0)
            if done >= ref.num_samples:
                continue
            for sample in read_shard(ref.tar_path, expected_token_space=self.expected_token_space, index=ref.index,
                                     start=done, max_member_bytes=self.max_member_bytes):
                self._consumed[pos] = sample.index_in_shard + 1  # before yield: the consumer has it now
                yield dataclasses.replace(sample, shard_pos=pos)
        if workers == 1:
            self.epoch += 1
            self._consumed = {}

    def record(self, sample: Sample) -> None:
        """Report a sample consumed in the main process when it was read by a DataLoader worker."""
        if sample.shard_pos < 0 or sample.index_in_shard < 0:
            raise ShardError(f"sample {sample.key} did not come from a ShardReader; cannot record its position")
        self._consumed[sample.shard_pos] = max(self._consumed.get(sample.shard_pos, 0), sample.index_in_shard + 1)

    # ---- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the next unseen sample is: epoch, shard_cursor (first rank-list shard not finished),
        sample_in_shard (samples of it already delivered) and progress on later shards (workers)."""
        shards = self.rank_shards()
        cursor = 0
        while cursor < len(shards) and self._consumed.get(cursor, 0) >= shards[cursor].num_samples:
            cursor += 1
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "epoch": self.epoch, "shard_cursor": cursor,
            "sample_in_shard": self._consumed.get(cursor, 0) if cursor < len(shards) else 0,
            "consumed": {str(p): n for p, n in sorted(self._consumed.items()) if p > cursor and n > 0},
            "rank": self.rank, "world_size": self.world_size, "shuffle_seed": self.shuffle_seed,
            "num_shards": len(self.refs), "shards_sha256": self._shards_sha256,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly after the last sample delivered when `state` was taken."""
        where = "ShardReader.load_state_dict"
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ShardError(f"{where}: not a {STATE_FORMAT} v{STATE_VERSION} state")
        for field in ("rank", "world_size", "shuffle_seed", "shards_sha256"):
            if state.get(field) != getattr(self, field if field != "shards_sha256" else "_shards_sha256"):
                raise ShardError(
                    f"{where}: the state was saved with a different {field} ({state.get(field)!r}); resume with the "
                    "same shards, rank, world_size and shuffle_seed, or start a new epoch without the state"
                )
        self.epoch = int(state["epoch"])
        shards = self.rank_shards()
        cursor = int(state["shard_cursor"])
        if not 0 <= cursor <= len(shards):
            raise ShardError(f"{where}: shard_cursor {cursor} outside this rank's {len(shards)} shards")
        consumed = {p: shards[p].num_samples for p in range(cursor)}
        if cursor < len(shards):
            consumed[cursor] = int(state["sample_in_shard"])
        consumed.update({int(p): int(n) for p, n in state.get("consumed", {}).items()})
        for p, n in consumed.items():
            if not (0 <= p < len(shards) and 0 <= n <= shards[p].num_samples):
                raise ShardError(f"{where}: progress {n} on shard position {p} does not fit this rank's shards")
        self._consumed = consumed


__all__ = ["Sample", "ShardReader", "read_shard", "STATE_FORMAT"]
