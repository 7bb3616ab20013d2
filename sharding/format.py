"""The uti shard format: names, header (version 2), index and listing. This module is an ABI.

Once shards exist on a cluster, changing anything below breaks users: change it only with a
version bump, and keep a reader for version 1.

Layout (OUT may be a local path or an fsspec URL such as ``s3://bucket/out``)::

    OUT/shards/{split}/shard-000042.tar    the samples (a WebDataset-compatible tar)
    OUT/shards/{split}/shard-000042.json   the index, written LAST: the completion marker

A shard whose index is missing, unreadable or inconsistent with its tar does not exist: it is not
listed by `list_shards` and is reported by `find_orphans` instead.

Tar members, in this order, all regular files (mode 0o644, mtime 0, uid/gid 0, uname/gname "",
USTAR format, no extension headers) so that the same inputs give byte-identical tars:

1. ``__header__.json`` -- canonical JSON (`uti.token_space.canonical_json`)::

     {"format": "uti.shard", "version": 2, "token_space_id": <hex>,
      "token_space": <TokenSpace.to_dict()>, "codec_fingerprints": {modality: fingerprint},
      "encode_policy": {modality: <uti.codecs.batching.EncodePolicy.to_dict()>},
      "shard": "shard-000042", "split": "train", "producer": "uti <version>"}

   Version 2 adds ``encode_policy``: the numerics that made each media modality's tokens (device type,
   dtype, TF32, items per forward pass, padding rule, where media were prepared, torch version). It
   is not part of the token-space ID (it changes numerics, not what a token means): verify re-encodes
   with it. A version 1 header (no policy: written before it was recorded, or by a caller of
   `write_shard` that gives none) is still read; its policy is unknown.

   (Plain USTAR headers only: no pax, GNU long-name or sparse headers. The archive ends with two
   zero blocks and is padded to a 10240-byte record, as the stdlib tarfile writes it.)

2. per sample, in the order the writer was given them:
   ``{key}.tokens.npy`` 1-D little-endian uint32 global IDs of the media (may be empty),
   ``{key}.text.npy``   1-D little-endian uint32 global IDs of all captions concatenated,
   ``{key}.json``       canonical JSON meta with at least ``id`` (canonical sample ID), ``split``,
   ``modality`` and ``token_space_id``, plus whatever decode needs (sample_rate, n_frames, grid...).
   ``.npy`` members are numpy format version 1.0, written with allow_pickle=False.

``key = sample_key(id)``: the first 24 hex digits of SHA-256 of the UTF-8 canonical ID, so member
names are safe whatever the source file names were (WebDataset splits a key at its first dot; keys
hold no dots or slashes).

Index ``shard-000042.json`` (canonical JSON)::

    {"format": "uti.shard_index", "version": 3, "shard": ..., "split": ..., "token_space_id": ...,
     "num_samples": N, "keys": [...], "ids": [...], "modalities": [...], "token_counts": [...],
     "text_token_counts": [...], "offsets": [...], "tar_bytes": size, "tar_sha256": hex,
     "errors": [{...}, ...], "extra": {...}}

``offsets[i]`` (index version 2 on) is the byte offset in the tar of sample i's first member header
(``{key}.tokens.npy``), so a reader can seek to any sample. ``modalities[i]`` (version 3) is sample
i's meta ``modality``, so what a sample is can be known without reading the tar (a token count
never tells: a 32-frame EnCodec clip has the 256 tokens of a 16x16 image). Version 1 indexes (no
``offsets``) and version 2 (no ``modalities``) are still read: a reader then reaches a sample by
streaming over the ones before it, and takes modalities from the sample metas (`sample_modalities`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from sharding.errors import ShardError
from sharding.storage import filesystem
from uti.atomic import TEMP_MARKER  # one temp-name rule for every writer: find_orphans relies on it

if TYPE_CHECKING:
    from sharding.manifest import ManifestRow

log = logging.getLogger(__name__)

FORMAT = "uti.shard"
INDEX_FORMAT = "uti.shard_index"
VERSION = 2  # of the tar (its header); the index has its own version since it gained member offsets
HEADER_VERSIONS = (1, 2)  # 1: no encode_policy
# Index version 2 adds "offsets" (where each sample's first member starts in the tar) so a reader
# can seek to any sample; version 3 adds "modalities" (each sample's meta modality). Older indexes
# stay readable (readers skip by streaming, and read modalities from the sample metas).
INDEX_VERSION = 3
INDEX_VERSIONS = (1, 2, 3)

SHARDS_DIR = "shards"
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".json"
HEADER_MEMBER = "__header__.json"
# Per-sample members, in the order they appear in the tar. Anything else is refused unread.
SAMPLE_EXTENSIONS: tuple[str, ...] = ("tokens.npy", "text.npy", "json")
TOKEN_DTYPE = np.dtype("<u4")
NPY_VERSION = (1, 0)
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024
KEY_HEX_DIGITS = 24
# USTAR names hold 100 bytes and ours have no "/" to split on: key + ".tokens.npy" must fit.
MAX_KEY_LENGTH = 64

# Keys become member names and shard/split names become path components: letters, digits, "_" and
# "-" only (no dot: WebDataset splits keys at the first dot; no slash; no leading "_" or "-", which
# keeps "__header__" and option-like names out of the sample namespace).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Temporary files of an interrupted writer: ".shard-000042.tar.tmp-XXXX" / ".shard-000042.json.tmp-XXXX".

HEADER_KEYS = ("format", "version", "token_space_id", "token_space", "codec_fingerprints", "shard", "split", "producer")
INDEX_KEYS = (
    "format", "version", "shard", "split", "token_space_id", "num_samples", "keys", "ids",
    "token_counts", "text_token_counts", "tar_bytes", "tar_sha256", "errors", "extra",
)

REGENERATE = "delete the shard's .tar and .json and re-run `uti tokenize` (it rewrites every shard without a valid index)"


# ---- the sample ---------------------------------------------------------------------------------
# "schema" marks what every stored sample must carry: "required" (the writer and the reader refuse a
# sample without it) and "common" (verify's shapes check asks for it too). META_REQUIRED and
# META_COMMON below are read off these marks, so the schema has this one definition.
_REQUIRED = {"schema": "required"}
_COMMON = {"schema": "common"}


@dataclass(frozen=True, kw_only=True)
class SampleMeta:
    """A sample's ``{key}.json``, as the tokenize job writes it (`to_dict` is the stored form)."""

    id: str = field(metadata=_REQUIRED)  # canonical sample ID
    split: str = field(metadata=_REQUIRED)
    modality: str = field(metadata=_REQUIRED)
    token_space_id: str = field(metadata=_REQUIRED)
    captions: tuple[str, ...] = field(metadata=_COMMON)
    caption_token_lengths: tuple[int, ...] = field(metadata=_COMMON)  # cuts text.npy back into captions
    dataset: str | None
    source: Mapping[str, Any]  # sharding.media.source_meta: "source" (and "source_ref", "window"); source_row reads it back
    source_sha256: str | None  # of the media file's bytes; None for text rows
    codec: Mapping[str, Any]  # what decode needs, from the codec (sample_rate, n_frames, grid, ...): MEDIA_META
    info: Mapping[str, Any]  # what the read saw of the source (source_sample_rate, duration, ...)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object stored in the tar (canonical JSON sorts its keys)."""
        return {
            "id": self.id, "split": self.split, "modality": self.modality, "token_space_id": self.token_space_id,
            "dataset": self.dataset, **self.source, "source_sha256": self.source_sha256,
            "captions": list(self.captions), "caption_token_lengths": list(self.caption_token_lengths),
            **self.codec, **self.info,
        }


META_REQUIRED: tuple[str, ...] = tuple(f.name for f in fields(SampleMeta) if f.metadata.get("schema") == "required")
META_COMMON: tuple[str, ...] = tuple(f.name for f in fields(SampleMeta) if f.metadata.get("schema"))
# The codec fields a media sample's meta carries for decode (an image's shape fields follow the token
# space's image layout: "grid" for a grid codec, "n_tokens" for a causal1d one; see TokenSpace.layout).
MEDIA_META: dict[str, tuple[str, ...]] = {
    "audio": ("sample_rate", "channels", "n_samples", "n_frames", "n_q", "frame_rate"),
    "image": ("proc_size", "grid"),
    "text": (),
}
_META_FIELDS = frozenset(f.name for f in fields(SampleMeta)) | {"source_ref", "window"}  # source_meta's keys


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to a single bool
class Sample:
    """One sample as it is written (sharding.reader.Sample is one as it is read back, with its key)."""

    id: str
    tokens: np.ndarray  # uint32 global IDs of the media (empty for text rows)
    text: np.ndarray  # uint32 global IDs of all captions concatenated
    meta: SampleMeta

    def to_dict(self) -> dict[str, Any]:
        """The form `sharding.writer.write_shard` takes."""
        return {"id": self.id, "tokens": self.tokens, "text": self.text, "meta": self.meta.to_dict()}


def build_sample(row: "ManifestRow", *, split: str, token_space_id: str, tokens: np.ndarray, text: np.ndarray,
                 caption_token_lengths: Sequence[int], codec_meta: Mapping[str, Any] | None = None,
                 source_sha256: str | None = None, info: Mapping[str, Any] | None = None) -> Sample:
    """The one way a manifest row and its encoding become a stored sample: the tokenize job, verify's
    retokenize and the test fixtures all call this. `text`/`caption_token_lengths` are
    `UnifiedTokenizer.encode_captions(row.captions)`; `codec_meta` is the meta `encode_audios`/`encode_images`
    return (its modality and token_space_id are the sample's own fields, set here)."""
    from sharding.media import source_meta  # sharding.media sits above this module

    codec_meta = {k: v for k, v in (codec_meta or {}).items() if k not in ("modality", "token_space_id")}
    info = dict(info or {})
    # A codec or read field named like a sample field would silently replace it in the stored JSON.
    clash = sorted((set(codec_meta) | set(info)) & _META_FIELDS)
    if clash:
        raise ShardError(f"sample {row.id!r}: codec/read meta field(s) {', '.join(clash)} collide with the sample's "
                         "own fields; rename them in the codec adapter")
    lengths = tuple(int(n) for n in caption_token_lengths)
    if len(lengths) != len(row.captions) or sum(lengths) != int(text.size):
        raise ShardError(f"sample {row.id!r}: {len(row.captions)} captions, caption_token_lengths {list(lengths)} "
                         f"and {int(text.size)} text IDs do not agree; encode them with encode_captions")
    meta = SampleMeta(id=row.id, split=split, modality=row.modality, token_space_id=token_space_id,
                      captions=tuple(row.captions), caption_token_lengths=lengths, dataset=row.dataset,
                      source=source_meta(row), source_sha256=source_sha256, codec=codec_meta, info=info)
    return Sample(id=row.id, tokens=tokens, text=text, meta=meta)


def sample_key(canonical_id: str) -> str:
    """The member-name key of a sample: first 24 hex digits of SHA-256 of its UTF-8 canonical ID."""
    if not isinstance(canonical_id, str) or not canonical_id:
        raise ShardError(f"sample id must be a non-empty string, got {canonical_id!r}")
    return hashlib.sha256(canonical_id.encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


def is_safe_name(name: Any) -> bool:
    return isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None


def check_name(name: Any, what: str, where: str) -> str:
    if not is_safe_name(name):
        raise ShardError(
            f"{where}: {what} {name!r} is not a safe name; use 1-100 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def is_hex64(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def require_keys(obj: Any, keys: Sequence[str], *, what: str, where: str, fix: str = REGENERATE,
                 kind: type = dict, error: type[ShardError] = ShardError) -> None:
    """`obj` is a `kind` (a parsed JSON object; the writer takes any Mapping) holding every one of `keys`;
    otherwise `error` naming where, what and the fix. The header, the index and the writer's meta use it."""
    suffix = f"; {fix}" if fix else ""
    if not isinstance(obj, kind):
        noun = "a JSON object" if kind is dict else "a mapping"
        raise error(f"{where}: {what} must be {noun}, got {type(obj).__name__}{suffix}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise error(f"{where}: {what} lacks {', '.join(missing)}{suffix}")


def _check_format(obj: dict, fmt: str, versions: Sequence[int], *, what: str, where: str) -> None:
    """The format tag and a version this reader supports (bool is not a version, though True == 1)."""
    if obj["format"] != fmt:
        raise ShardError(f"{where}: {what} format is {obj['format']!r}, expected {fmt!r}; not written by uti")
    if obj["version"] not in versions or isinstance(obj["version"], bool):
        raise ShardError(
            f"{where}: {what} format version {obj['version']!r} is not supported by this reader "
            f"(supports {', '.join(map(str, versions))}); upgrade uti to read it"
        )


# ---- header -------------------------------------------------------------------------------------
def build_header(*, token_space: Any, shard: str, split: str, producer: str,
                 encode_policy: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """The `__header__.json` payload for a shard (token_space: a uti.token_space.TokenSpace). With
    `encode_policy` ({modality: EncodePolicy.to_dict()}) a version 2 header, else version 1."""
    header = {
        "format": FORMAT,
        "version": VERSION if encode_policy is not None else 1,
        "token_space_id": token_space.id,
        "token_space": token_space.to_dict(),
        "codec_fingerprints": {m: c.fingerprint for m, c in sorted(token_space.codecs.items())},
        "shard": shard,
        "split": split,
        "producer": producer,
    }
    if encode_policy is not None:
        header["encode_policy"] = {m: dict(p) for m, p in sorted(encode_policy.items())}
    return header


def header_policy(header: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """{modality: encode policy dict} of a version 2 header; None for version 1 (not recorded)."""
    return header.get("encode_policy") if header.get("version", 1) >= 2 else None


def validate_header(header: Any, where: str) -> dict:
    """Structural checks of a parsed header (the token-space checks are the reader's)."""
    require_keys(header, HEADER_KEYS, what=HEADER_MEMBER, where=where)
    _check_format(header, FORMAT, HEADER_VERSIONS, what="shard", where=where)
    if header["version"] >= 2:
        policy = header.get("encode_policy")
        if not isinstance(policy, dict) or not all(isinstance(m, str) and isinstance(p, dict) for m, p in policy.items()):
            raise ShardError(f"{where}: a version 2 header needs encode_policy, an object of one policy object per "
                             f"modality; {REGENERATE}")
    if not is_hex64(header["token_space_id"]):
        raise ShardError(f"{where}: header token_space_id {header['token_space_id']!r} is not a SHA-256 hex digest")
    if not isinstance(header["token_space"], dict) or not isinstance(header["codec_fingerprints"], dict):
        raise ShardError(f"{where}: header token_space and codec_fingerprints must be objects; {REGENERATE}")
    check_name(header["shard"], "header shard name", where)
    check_name(header["split"], "header split", where)
    return header


# ---- index --------------------------------------------------------------------------------------
def build_index(
    *, shard: str, split: str, token_space_id: str, keys: list[str], ids: list[str],
    token_counts: list[int], text_token_counts: list[int], tar_bytes: int, tar_sha256: str,
    errors: list[dict], extra: dict, offsets: list[int] | None = None, modalities: list[str] | None = None,
) -> dict:
    """A version 3 index when the member `offsets` and the sample `modalities` are given (the writer
    always gives both), version 2 with the offsets only, else version 1."""
    if modalities is not None and offsets is None:
        raise ValueError("build_index: modalities (index version 3) need the member offsets too")
    version = 1 if offsets is None else 2 if modalities is None else INDEX_VERSION
    index = {
        "format": INDEX_FORMAT, "version": version, "shard": shard, "split": split,
        "token_space_id": token_space_id, "num_samples": len(keys), "keys": list(keys), "ids": list(ids),
        "token_counts": list(token_counts), "text_token_counts": list(text_token_counts),
        "tar_bytes": tar_bytes, "tar_sha256": tar_sha256, "errors": list(errors), "extra": dict(extra),
    }
    if offsets is not None:
        index["offsets"] = list(offsets)
    if modalities is not None:
        index["modalities"] = list(modalities)
    return index


def sample_offsets(index: Mapping[str, Any]) -> list[int] | None:
    """Byte offsets in the tar of each sample's first member header (version 2 indexes), or None
    (version 1: a reader reaches sample k by streaming over the k before it)."""
    return index.get("offsets") if index.get("version", 1) >= 2 else None


def index_modalities(index: Mapping[str, Any]) -> list[str] | None:
    """Each sample's modality as its meta has it (version 3 indexes), or None: an older index, whose
    modalities only the sample metas in the tar hold (sharding.reader.sample_modalities reads them)."""
    return index.get("modalities") if index.get("version", 1) >= 3 else None


def validate_index(index: Any, where: str) -> dict:
    """Check an index's schema and internal consistency; return it. Raises ShardError naming `where`."""
    require_keys(index, INDEX_KEYS, what="shard index", where=where)
    _check_format(index, INDEX_FORMAT, INDEX_VERSIONS, what="shard index", where=where)
    check_name(index["shard"], "shard name", where)
    check_name(index["split"], "split", where)
    if not is_hex64(index["token_space_id"]) or not is_hex64(index["tar_sha256"]):
        raise ShardError(f"{where}: token_space_id and tar_sha256 must be SHA-256 hex digests; {REGENERATE}")
    n = index["num_samples"]
    if not _is_count(n) or not _is_count(index["tar_bytes"]):
        raise ShardError(f"{where}: num_samples and tar_bytes must be non-negative integers")
    for name in ("keys", "ids", "token_counts", "text_token_counts"):
        value = index[name]
        if not isinstance(value, list) or len(value) != n:
            raise ShardError(f"{where}: {name} must be a list of num_samples={n} entries; {REGENERATE}")
    if not all(is_safe_name(k) for k in index["keys"]) or len(set(index["keys"])) != n:
        raise ShardError(f"{where}: keys must be unique safe names; {REGENERATE}")
    if not all(isinstance(i, str) and i for i in index["ids"]) or len(set(index["ids"])) != n:
        raise ShardError(f"{where}: ids must be unique non-empty strings; {REGENERATE}")
    if not all(_is_count(c) for c in index["token_counts"] + index["text_token_counts"]):
        raise ShardError(f"{where}: token counts must be non-negative integers; {REGENERATE}")
    if not isinstance(index["errors"], list) or not all(isinstance(e, dict) for e in index["errors"]):
        raise ShardError(f"{where}: errors must be a list of objects; {REGENERATE}")
    if not isinstance(index["extra"], dict):
        raise ShardError(f"{where}: extra must be an object; {REGENERATE}")
    if index["version"] >= 2:
        offsets = index.get("offsets")
        # Each sample starts on a 512-byte block after the header member, in increasing order, inside the tar.
        if (not isinstance(offsets, list) or len(offsets) != n or not all(_is_count(o) and o % 512 == 0 and o > 0
                                                                         for o in offsets)
                or any(b <= a for a, b in zip(offsets, offsets[1:])) or (offsets and offsets[-1] >= index["tar_bytes"])):
            raise ShardError(f"{where}: offsets must be num_samples={n} increasing 512-byte-aligned positions inside "
                             f"the tar (version 2 index); {REGENERATE}")
    if index["version"] >= 3:
        modalities = index.get("modalities")
        if not isinstance(modalities, list) or len(modalities) != n or not all(
                isinstance(m, str) and m for m in modalities):
            raise ShardError(f"{where}: modalities must be a list of num_samples={n} non-empty strings (version 3 "
                             f"index); {REGENERATE}")
    return index


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_index(raw: bytes, where: str) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd integers, absurd nesting
        raise ShardError(f"{where}: shard index is not valid UTF-8 JSON ({type(exc).__name__}: {exc}); "
                         f"{REGENERATE}") from None
    return validate_index(data, where)


def read_index(path: str | os.PathLike) -> dict:
    """Read and validate one shard index (local path or fsspec URL)."""
    url = os.fspath(path)
    fs, fpath = url_to_fs(url)
    try:
        with fs.open(fpath, "rb") as fh:
            raw = fh.read()
    except (OSError, ValueError) as exc:  # FileNotFoundError and friends; fsspec may raise ValueError
        raise ShardError(f"{url}: cannot read shard index ({exc})") from exc
    return parse_index(raw, url)


# ---- filesystem helpers (local paths and fsspec URLs alike) ---------------------------------------
def url_to_fs(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path); a missing s3fs/gcsfs is a StorageError naming the extra (sharding.storage)."""
    return filesystem(url)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Plain path for local files (what users expect to see), protocol URL for everything else."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def split_dir(out_dir: str | os.PathLike, split: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = url_to_fs(out_dir)
    return fs, posixpath.join(root, SHARDS_DIR, split)


# ---- listing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardRef:
    """A complete shard: its index exists, is valid and agrees with the tar it sits next to."""

    split: str
    name: str
    tar_path: str  # local path or fsspec URL
    index_path: str
    index: Mapping[str, Any] = field(hash=False)  # a dict: hash refs by location only

    @property
    def num_samples(self) -> int:
        return int(self.index["num_samples"])


@dataclass(frozen=True)
class Orphan:
    """Something in OUT/shards that is not a complete shard.

    kind: "tar_without_index" (half-written or interrupted), "index_without_tar", "invalid_index",
    "size_mismatch" (tar size differs from the index's tar_bytes), "temp_file" (writer leftover).
    """

    split: str
    name: str
    kind: str
    path: str
    reason: str


def list_shards(out_dir: str | os.PathLike, split: str | None = None) -> list[ShardRef]:
    """Complete shards under OUT/shards, ordered by split then name. Incomplete ones are skipped
    (with a log line); `find_orphans` says what they are."""
    refs, orphans = _scan(out_dir, split)
    for o in orphans:
        log.debug("not a complete shard: %s (%s: %s)", o.path, o.kind, o.reason)
    return refs


def find_orphans(out_dir: str | os.PathLike, split: str | None = None) -> list[Orphan]:
    """Everything under OUT/shards that is not a complete shard, ordered by split, name, kind."""
    return _scan(out_dir, split)[1]


def _scan(out_dir: str | os.PathLike, split: str | None) -> tuple[list[ShardRef], list[Orphan]]:
    fs, root = url_to_fs(out_dir)
    shards_root = posixpath.join(root, SHARDS_DIR)
    if split is not None:
        check_name(split, "split", os.fspath(out_dir))
        splits = [split]
    else:
        splits = sorted(
            posixpath.basename(e["name"].rstrip("/")) for e in _ls(fs, shards_root) if e["type"] == "directory"
        )
    refs: list[ShardRef] = []
    orphans: list[Orphan] = []
    for sp in splits:
        if not is_safe_name(sp):
            continue  # not ours (e.g. a ".cache" folder); the split name rules keep ours safe
        directory = posixpath.join(shards_root, sp)
        files = {posixpath.basename(e["name"]): e for e in _ls(fs, directory) if e["type"] == "file"}
        names = sorted({n[: -len(s)] for n in files for s in (TAR_SUFFIX, INDEX_SUFFIX) if n.endswith(s) and is_safe_name(n[: -len(s)])})
        for name in names:
            tar = files.get(name + TAR_SUFFIX)
            idx = files.get(name + INDEX_SUFFIX)
            tar_path = posixpath.join(directory, name + TAR_SUFFIX)
            idx_path = posixpath.join(directory, name + INDEX_SUFFIX)
            if idx is None:
                orphans.append(Orphan(sp, name, "tar_without_index", to_url(fs, tar_path), "no index: never completed"))
                continue
            if tar is None:
                orphans.append(Orphan(sp, name, "index_without_tar", to_url(fs, idx_path), "index present, tar missing"))
                continue
            try:
                with fs.open(idx_path, "rb") as fh:
                    index = parse_index(fh.read(), to_url(fs, idx_path))
                if index["shard"] != name or index["split"] != sp:
                    raise ShardError(f"index names shard {index['split']}/{index['shard']}, but sits at {sp}/{name}")
            except (ShardError, OSError) as exc:
                orphans.append(Orphan(sp, name, "invalid_index", to_url(fs, idx_path), str(exc)))
                continue
            size = tar.get("size")
            if size is not None and size != index["tar_bytes"]:
                orphans.append(Orphan(
                    sp, name, "size_mismatch", to_url(fs, tar_path),
                    f"tar is {size} bytes, index says {index['tar_bytes']}",
                ))
                continue
            refs.append(ShardRef(split=sp, name=name, tar_path=to_url(fs, tar_path), index_path=to_url(fs, idx_path), index=index))
        for fname in sorted(files):
            if fname.startswith(".") and TEMP_MARKER in fname:
                orphans.append(Orphan(
                    sp, fname[1:].split(".", 1)[0], "temp_file", to_url(fs, posixpath.join(directory, fname)),
                    "left by an interrupted writer",
                ))
    orphans.sort(key=lambda o: (o.split, o.name, o.kind, o.path))
    return refs, orphans


def _ls(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    try:
        return list(fs.ls(path, detail=True))
    except FileNotFoundError:
        return []
