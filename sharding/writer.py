"""Write one shard (format: see sharding.format): validated samples in, deterministic tar + index out.

Crash safety: the tar goes to a temporary name in the destination directory, is flushed, fsynced
and renamed; the index (the completion marker) follows the same way. A crash at any point leaves
either nothing, a temp file, or a tar without index -- all of which the listing ignores and a rerun
rewrites. For non-local URLs the tar is built in a local temp file and uploaded with fsspec, then
the index is uploaded last.

Rewriting an existing shard first deletes its index, so at no moment does an index describe a tar
it was not computed from. Tar and index get the mode an ordinary open() gives (0666 minus the umask;
see uti.atomic.create_temp), so shards on a shared filesystem are as readable as the umask allows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import tarfile
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

import uti
from uti.atomic import atomic_write, create_temp
from sharding.errors import ShardError, ShardWriteError
from sharding.storage import upload_file
from sharding.format import (
    HEADER_MEMBER, INDEX_SUFFIX, MAX_KEY_LENGTH, META_REQUIRED, NPY_VERSION, TAR_SUFFIX, TEMP_MARKER, TOKEN_DTYPE,
    build_header, build_index, check_name, is_local, is_safe_name, require_keys, sample_key, split_dir,
)
from uti.token_space import TokenSpace, canonical_json

log = logging.getLogger(__name__)

PRODUCER = f"uti {uti.__version__}"


class _HashingSink:
    """File-like that hashes and counts every byte on its way to the real file (no re-read)."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _member(name: str, size: int) -> tarfile.TarInfo:
    # Every field fixed so the bytes depend only on the content: same inputs, same tar.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=NPY_VERSION, allow_pickle=False)
    return buf.getvalue()


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ShardWriter:
    """Context manager writing OUT/shards/{split}/{shard}.tar and, on close, its index.

    >>> with ShardWriter(out, split="train", shard="shard-000000", token_space=ts) as w:
    ...     w.add(id="clotho:dev/a.wav", tokens=toks, text=txt, meta=meta)
    ...     index = w.close(errors=failed_rows)

    Leaving the block without close() closes with no errors; leaving it with an exception writes
    nothing and removes the temp file.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        split: str,
        shard: str,
        token_space: TokenSpace,
        extra: Mapping[str, Any] | None = None,
        encode_policy: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        if not isinstance(token_space, TokenSpace):
            raise ShardWriteError(f"token_space must be a uti.token_space.TokenSpace, got {type(token_space).__name__}")
        self.split = check_name(split, "split", os.fspath(out_dir))
        self.shard = check_name(shard, "shard name", os.fspath(out_dir))
        self.token_space = token_space
        self.token_space_id = token_space.id
        self._vocab_size = token_space.vocab_size
        self._extra = dict(extra or {})
        self._where = f"{os.fspath(out_dir)}: {split}/{shard}"
        _check_json(self._extra, f"{self._where}: extra")

        self._fs, self._dir = split_dir(out_dir, split)
        self._local = is_local(self._fs)
        self.tar_path = posixpath.join(self._dir, shard + TAR_SUFFIX)
        self.index_path = posixpath.join(self._dir, shard + INDEX_SUFFIX)

        self._keys: list[str] = []
        self._ids: list[str] = []
        self._key_to_id: dict[str, str] = {}
        self._seen_ids: set[str] = set()
        self._token_counts: list[int] = []
        self._text_counts: list[int] = []
        self._offsets: list[int] = []  # where each sample's first member starts (index version 2: readers seek)
        self._modalities: list[str] = []  # each sample's meta modality (index version 3)
        self._closed = False

        if self._local:
            os.makedirs(self._dir, exist_ok=True)
            # The temp file is renamed into place, so its mode is the shard's: the umask's, like open().
            fd, self._tmp = create_temp(self._dir, shard + TAR_SUFFIX)
        else:
            # A private local staging copy (0600 in the shared temp dir); the upload gets the store's access rules.
            fd, self._tmp = tempfile.mkstemp(prefix=f".{shard}{TAR_SUFFIX}{TEMP_MARKER}")
        try:
            self._file = os.fdopen(fd, "wb")
            self._sink = _HashingSink(self._file)
            # Stream mode ("w|") never seeks; USTAR has no per-file extension headers to vary.
            self._tar = tarfile.open(fileobj=self._sink, mode="w|", format=tarfile.USTAR_FORMAT, encoding="utf-8")
            header = build_header(token_space=token_space, shard=shard, split=split, producer=PRODUCER,
                                  encode_policy=encode_policy)
            self._add_member(HEADER_MEMBER, canonical_json(header))
        except BaseException:
            self.abort()
            raise

    # ---- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    # ---- writing --------------------------------------------------------------------------------
    def add(self, *, key: str | None = None, id: str, tokens: np.ndarray, text: np.ndarray, meta: Mapping[str, Any]) -> str:
        """Validate and append one sample; returns its key. Nothing is cast or fixed up.

        Every check runs before any byte is written, so after a refused sample (ShardWriteError)
        the writer is still consistent: the caller may record the failure and carry on.
        """
        if self._closed:
            raise ShardWriteError(f"{self._where}: add() after close() or abort()")
        if not isinstance(id, str) or not id:
            raise ShardWriteError(f"{self._where}: sample id must be a non-empty string, got {id!r}")
        where = f"{self._where}: sample {id!r}"
        key = sample_key(id) if key is None else key
        if not is_safe_name(key) or len(key) > MAX_KEY_LENGTH:
            raise ShardWriteError(
                f"{where}: key {key!r} is not a safe member name (up to {MAX_KEY_LENGTH} letters, digits, '_', '-'; "
                "no dots); omit key to use sample_key(id)"
            )
        if key in self._key_to_id:
            raise ShardWriteError(
                f"{self._where}: duplicate key {key!r} for sample ids {self._key_to_id[key]!r} and {id!r}; "
                "each sample may appear once per shard (fix the manifest or the shard plan)"
            )
        if id in self._seen_ids:
            raise ShardWriteError(f"{where}: sample id appears twice in this shard; fix the manifest or the shard plan")
        tokens_b = self._ids_npy(tokens, "tokens", where)
        text_b = self._ids_npy(text, "text", where)
        meta_b = self._meta_json(meta, id, where)

        offset = self._tar.offset  # the tarfile's logical position: the next member header starts here
        self._add_member(f"{key}.tokens.npy", tokens_b)
        self._add_member(f"{key}.text.npy", text_b)
        self._add_member(f"{key}.json", meta_b)
        self._keys.append(key)
        self._offsets.append(offset)
        self._ids.append(id)
        self._key_to_id[key] = id
        self._seen_ids.add(id)
        self._token_counts.append(int(tokens.shape[0]))
        self._text_counts.append(int(text.shape[0]))
        self._modalities.append(str(meta["modality"]))
        return key

    def _ids_npy(self, array: Any, field: str, where: str) -> bytes:
        if not isinstance(array, np.ndarray):
            raise ShardWriteError(f"{where}: {field} must be a numpy uint32 array, got {type(array).__name__}")
        if array.dtype != TOKEN_DTYPE:
            raise ShardWriteError(
                f"{where}: {field} has dtype {array.dtype}, expected little-endian uint32; token IDs are never "
                "cast silently -- produce them as np.uint32 in the tokenizer"
            )
        if array.ndim != 1:
            raise ShardWriteError(f"{where}: {field} must be 1-D, got shape {array.shape}; flatten it in frame-major order first")
        if array.size and int(array.max()) >= self._vocab_size:
            bad = int(array.max())
            raise ShardWriteError(
                f"{where}: {field} holds ID {bad} >= vocab size {self._vocab_size} of token space "
                f"{self.token_space_id[:12]}; the tokenizer produced an out-of-range ID (a bug, never clip it)"
            )
        return _npy_bytes(array)

    def _meta_json(self, meta: Any, id: str, where: str) -> bytes:
        require_keys(meta, META_REQUIRED, what="meta", where=where, fix="build it with sharding.format.build_sample",
                     kind=Mapping, error=ShardWriteError)
        if meta["id"] != id:
            raise ShardWriteError(f"{where}: meta id {meta['id']!r} differs from the sample id")
        if meta["split"] != self.split:
            raise ShardWriteError(f"{where}: meta split {meta['split']!r} differs from the shard's split {self.split!r}")
        if not isinstance(meta["modality"], str) or not meta["modality"]:
            raise ShardWriteError(f"{where}: meta modality must be a non-empty string, got {meta['modality']!r}")
        if meta["token_space_id"] != self.token_space_id:
            raise ShardWriteError(
                f"{where}: meta token_space_id {str(meta['token_space_id'])[:16]!r} differs from the shard's "
                f"{self.token_space_id[:16]}; the sample was tokenized with another token space"
            )
        return _check_json(dict(meta), f"{where}: meta")

    def _add_member(self, name: str, data: bytes) -> None:
        self._tar.addfile(_member(name, len(data)), io.BytesIO(data))

    # ---- finishing --------------------------------------------------------------------------------
    def close(self, errors: Iterable[Mapping[str, Any]] = ()) -> dict:
        """Finish the tar, publish it, then publish the index (last). Returns the index."""
        if self._closed:
            raise ShardWriteError(f"{self._where}: close() called twice (or after abort())")
        try:
            errors_list = list(errors)
            for i, e in enumerate(errors_list):
                if not isinstance(e, Mapping):
                    raise ShardWriteError(f"{self._where}: errors[{i}] must be a mapping (id, path, stage, reason), got {type(e).__name__}")
                errors_list[i] = dict(e)
                _check_json(errors_list[i], f"{self._where}: errors[{i}]")
            self._tar.close()  # writes the end-of-archive blocks and record padding
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            index = build_index(
                shard=self.shard, split=self.split, token_space_id=self.token_space_id, keys=self._keys,
                ids=self._ids, token_counts=self._token_counts, text_token_counts=self._text_counts,
                tar_bytes=self._sink.size, tar_sha256=self._sink.sha.hexdigest(), errors=errors_list,
                extra=self._extra, offsets=self._offsets, modalities=self._modalities,
            )
            self._publish(canonical_json(index))
        except BaseException:
            self.abort()
            raise
        self._closed = True
        log.debug("wrote %s (%d samples, %d bytes)", self.tar_path, len(self._keys), self._sink.size)
        return index

    def _publish(self, index_bytes: bytes) -> None:
        fs = self._fs
        if self._local:
            if os.path.exists(self.index_path):
                os.unlink(self.index_path)
                _fsync_dir(self._dir)
            os.replace(self._tmp, self.tar_path)
            _fsync_dir(self._dir)
            atomic_write(self.index_path, index_bytes)
            _fsync_dir(self._dir)
        else:
            fs.makedirs(self._dir, exist_ok=True)
            if fs.exists(self.index_path):
                fs.rm(self.index_path)
            upload_file(fs, self._tmp, self.tar_path)  # multipart with bounded parts in flight (sharding.storage)
            os.unlink(self._tmp)
            # Object stores have no rename; a whole-object PUT is atomic, and the index goes last.
            fs.pipe_file(self.index_path, index_bytes)

    def abort(self) -> None:
        """Discard everything written so far; safe to call more than once."""
        self._closed = True
        for closer in (getattr(self, "_tar", None), getattr(self, "_file", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # the temp file is deleted below anyway
                    pass
        tmp = getattr(self, "_tmp", None)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _check_json(obj: Any, where: str) -> bytes:
    try:
        return canonical_json(obj)
    except (TypeError, ValueError) as exc:
        raise ShardWriteError(
            f"{where} is not JSON-serializable ({exc}); use plain str/int/float/bool/list/dict values "
            "(convert numpy scalars with int()/float(); NaN and infinity are not allowed)"
        ) from None


def write_shard(
    out_dir: str | os.PathLike,
    *,
    split: str,
    shard: str,
    token_space: TokenSpace,
    samples: Iterable[Mapping[str, Any]],
    errors: Iterable[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
    encode_policy: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """Write a whole shard from dicts with keys id, tokens, text, meta (and optionally key);
    `encode_policy`: what the header records of the numerics that made the tokens (uti.codecs.batching)."""
    required = {"id", "tokens", "text", "meta"}
    allowed = required | {"key"}
    with ShardWriter(out_dir, split=split, shard=shard, token_space=token_space, extra=extra,
                     encode_policy=encode_policy) as writer:
        for i, sample in enumerate(samples):
            unknown, missing = set(sample) - allowed, required - set(sample)
            if unknown or missing:
                raise ShardWriteError(
                    f"{writer._where}: sample #{i} has unknown field(s) {sorted(unknown)} / lacks {sorted(missing)}; "
                    f"a sample is a dict with {sorted(required)} and optionally 'key'"
                )
            writer.add(**sample)
        return writer.close(errors=errors)


__all__ = ["ShardWriter", "write_shard", "PRODUCER", "ShardError", "ShardWriteError"]
