"""Hugging Face `datasets` sources: a `save_to_disk` folder (Dataset or DatasetDict) or parquet files.

Media columns are read as raw storage (never decoded, so no audio/image backend is needed):
- a string, or a `{"path", "bytes"}` struct whose path is an existing file inside root: that file;
- otherwise embedded bytes: the row points at the dataset folder and `extra` carries a reference
  `{"hf_source", "hf_index", "column"}` (+ `hf_split` / `hf_file`) to read the bytes later.
The media column is the one typed `Audio` or `Image` in the stored features, else a plain struct column of
`bytes` and `path` (how `datasets` stores media never cast to a type) whose first rows' paths or bytes are
audio or images; several media columns, or a struct whose kind cannot be told, are named with the flags
that choose one (--hf-audio-column, --hf-image-column).
A DatasetDict keeps its split names; a single Dataset or parquet files get hash splits.
Canonical key: `id_column` (default `id` when present), else the media file's path relative to
root, else the SHA-256 of the media bytes (or of the text for text-only rows) - never row position.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    audio_duration,
    clean_captions,
    register_dataset,
    size_hints,
    hash_splits_option,
)
from sharding.datasets.jsonl import dataset_name_option
from sharding.manifest import HashSplits, ManifestError, ManifestRow, Rejected
from sharding.paths import PathEscapeError, resolve_inside

log = logging.getLogger(__name__)

BATCH = 256
CAPTION_GUESSES = ("caption", "captions", "text")
STRUCT_SAMPLE = 16  # rows looked at to tell what a plain {bytes, path} column holds


@dataclass(frozen=True)
class _Part:
    """One table to iterate: a split of a saved dataset, or one parquet file."""

    split: str | None
    ref: dict[str, Any]  # what a reader needs besides the row index to find the row again
    columns: list[str]
    media_types: dict[str, str]  # column -> "Audio" | "Image": the stored features, and plain media structs
    batches: Any  # callable(columns) -> iterator of lists of row dicts
    unknown_structs: tuple[str, ...] = ()  # {bytes, path} columns whose media kind could not be told


@register_dataset
class HFDataset(DatasetAdapter):
    name = "hf"
    options = ("audio_column", "image_column", "caption_column", "id_column", "name", "split_fractions")

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        hashing = hash_splits_option(options)
        dataset = dataset_name_option(options, self.name)
        if options.get("audio_column") and options.get("image_column"):
            raise ManifestError("hf: give --hf-audio-column or --hf-image-column, not both (one modality per manifest)")
        # Absolute and resolved: references are read later by workers with another working directory.
        data_root = Path(os.path.realpath(root if root.is_dir() else root.parent))
        for part in _open_parts(root):
            if splits is not None and part.split is not None and part.split not in splits:
                continue
            yield from self._part_rows(data_root, dataset, part, options, hashing, follow_symlinks)

    def _part_rows(
        self, root: Path, dataset: str, part: _Part, options: dict, hashing: HashSplits, follow_symlinks: bool
    ) -> Iterator[Item]:
        modality, media_col = _pick_media(part, options)
        caption_col = options.get("caption_column") or next((c for c in CAPTION_GUESSES if c in part.columns), None)
        id_col = options.get("id_column") or ("id" if "id" in part.columns else None)
        for opt, col in (("caption_column", caption_col), ("id_column", id_col), (f"{modality}_column", media_col)):
            if col is not None and col not in part.columns:
                raise ManifestError(
                    f"hf: --hf-{opt.replace('_', '-')} {col!r} is not a column of {part.ref}; "
                    f"columns: {', '.join(part.columns)}"
                )
        if modality == "text" and caption_col is None:
            raise ManifestError(
                f"hf: no audio/image column and no caption column found in {part.ref}; columns: "
                f"{', '.join(part.columns)}; pass --hf-audio-column, --hf-image-column or --hf-caption-column"
            )
        wanted = [c for c in dict.fromkeys([media_col, caption_col, id_col]) if c is not None]
        index = 0
        for batch in part.batches(wanted):
            for rec in batch:
                yield self._row(root, dataset, part, index, rec, modality, media_col, caption_col, id_col, hashing,
                                follow_symlinks)
                index += 1

    def _row(self, root, dataset, part, index, rec, modality, media_col, caption_col, id_col, hashing,
             follow_symlinks) -> Item:
        where = f"{part.ref.get('hf_file') or part.split or 'dataset'}[{index}]"
        captions = _captions(rec.get(caption_col)) if caption_col else []
        ref = {"hf_source": str(root), "hf_index": index, **part.ref}
        path: Path | None = None
        payload: bytes | None = None
        if media_col is not None:
            path, payload, reason = _media(root, rec.get(media_col), follow_symlinks)
            if reason:
                return Rejected(item=where, reason=f"column {media_col!r}: {reason}")
            ref["column"] = media_col
        # The key: the dataset's own id, else the file, else the content - so it survives reordering.
        if id_col is not None and rec.get(id_col) not in (None, ""):
            key = str(rec[id_col])
        elif path is not None:
            key = os.path.relpath(path, root)
        elif payload is not None:
            key = hashlib.sha256(payload).hexdigest()[:32]
        elif captions:
            key = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()[:32]
        else:
            return Rejected(item=where, reason="no id, media or caption to identify the row")
        item = f"{dataset}:{key}"
        split = part.split or hashing(item)
        if modality == "text":
            if not captions:
                return Rejected(item=item, reason=f"{where}: empty text in column {caption_col!r}")
            return ManifestRow(id=item, dataset=dataset, modality="text", path=None, captions=tuple(captions),
                               split=split, extra={k: v for k, v in ref.items() if k != "column"})
        if path is not None:
            duration, nbytes = size_hints(path, modality)
            extra: dict[str, Any] = {}
        else:
            duration = audio_duration(io.BytesIO(payload)) if modality == "audio" else None
            nbytes, extra, path = len(payload), ref, root
        return ManifestRow(id=item, dataset=dataset, modality=modality, path=str(path), captions=tuple(captions),
                           split=split, duration=duration, bytes=nbytes, extra=extra)


def _pick_media(part: _Part, options: dict) -> tuple[str, str | None]:
    if options.get("audio_column"):
        return "audio", options["audio_column"]
    if options.get("image_column"):
        return "image", options["image_column"]
    found = sorted(part.media_types.items())
    if not found and part.unknown_structs:
        cols = ", ".join(repr(c) for c in part.unknown_structs)
        log.warning("hf: %s: column(s) %s hold {bytes, path} structs of an unknown media kind and are not read; "
                    "take one with --hf-audio-column COLUMN or --hf-image-column COLUMN", part.ref or "dataset", cols)
    if len(found) > 1:
        raise ManifestError(
            f"hf: {part.ref} has several media columns ({', '.join(c for c, _ in found)}); "
            "choose one with --hf-audio-column or --hf-image-column"
        )
    if found:
        col, kind = found[0]
        return kind.lower(), col
    return "text", None


def _captions(value: Any) -> list[str]:
    if isinstance(value, str):
        return clean_captions([value])
    if isinstance(value, (list, tuple)):
        return clean_captions(value)
    return []


def _media(root: Path, value: Any, follow_symlinks: bool = False) -> tuple[Path | None, bytes | None, str | None]:
    """(file inside root, embedded bytes, rejection reason) for one raw media cell."""
    if isinstance(value, dict):
        file, payload = value.get("path"), value.get("bytes")
    elif isinstance(value, str):
        file, payload = value, None
    elif isinstance(value, (bytes, bytearray)):
        file, payload = None, bytes(value)
    elif value is None:
        return None, None, "empty value"
    else:
        kind = type(value).__name__
        return None, None, f"unsupported value of type {kind} (need a path string, bytes or {{path, bytes}})"
    problem = None
    if isinstance(file, str) and file:
        try:
            candidate = resolve_inside(root, file, allow_absolute=True, follow_symlinks=follow_symlinks)
            if candidate.is_file():
                return candidate, None, None
            problem = f"file {file!r} not found under {root}"
        except PathEscapeError as exc:
            problem = str(exc)
    if payload:
        return None, bytes(payload), None  # the bytes are in the dataset; the path was only a label
    return None, None, problem or "no file path and no embedded bytes"


def _open_parts(root: Path) -> list[_Part]:
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return _saved_parts(root)
    if root.is_file():
        files = [root] if root.suffix == ".parquet" else []
    else:
        files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    if not files:
        raise ManifestError(
            f"hf: {root} is neither a `save_to_disk` folder (dataset_dict.json or state.json) nor holds *.parquet files"
        )
    base = root if root.is_dir() else root.parent
    return [_parquet_part(f, base) for f in files]


def _saved_parts(root: Path) -> list[_Part]:
    import datasets  # heavy import, only for this adapter

    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a broken folder
        raise ManifestError(f"hf: cannot load {root} with datasets.load_from_disk: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        items = sorted(loaded.items())
    else:
        items = [(None, loaded)]
    parts = []
    for split, ds in items:
        media = {c: type(f).__name__ for c, f in ds.features.items() if type(f).__name__ in ("Audio", "Image")}

        def batches(columns: list[str], ds=ds) -> Iterator[list[dict]]:
            # Arrow format returns raw storage: no audio/image decoding, no torchcodec/PIL needed.
            table_ds = ds.select_columns(columns).with_format("arrow")
            for start in range(0, len(table_ds), BATCH):
                yield table_ds[start : start + BATCH].to_pylist()

        def head(column: str, ds=ds) -> list:
            return ds.select_columns([column]).with_format("arrow")[:STRUCT_SAMPLE].column(column).to_pylist()

        structs, unknown = _media_structs(ds.data.schema, media, head)
        ref = {"hf_split": split} if split is not None else {}
        parts.append(_Part(split=split, ref=ref, columns=list(ds.column_names), media_types={**media, **structs},
                           batches=batches, unknown_structs=unknown))
    return parts


def _media_structs(schema, typed: dict[str, str], head) -> tuple[dict[str, str], tuple[str, ...]]:
    """Untyped media columns: structs of `bytes` (binary) and `path` (string), as `datasets` stores audio and
    images when the column was never cast to Audio/Image (or lost the type in a round trip). What one holds
    is told from its first rows' paths or bytes (`head(column)` -> values); returns ({column: "Audio" |
    "Image"}, columns whose kind could not be told)."""
    import pyarrow as pa

    from sharding.media import media_kind

    found: dict[str, str] = {}
    unknown: list[str] = []
    for field in schema:
        if field.name in typed or not pa.types.is_struct(field.type):
            continue
        sub = {field.type.field(i).name: field.type.field(i).type for i in range(field.type.num_fields)}
        if not ({"bytes", "path"} <= set(sub) and (pa.types.is_binary(sub["bytes"])
                                                    or pa.types.is_large_binary(sub["bytes"]))):
            continue
        kinds = {media_kind(v.get("path"), v.get("bytes")) for v in head(field.name) if isinstance(v, dict)}
        kinds.discard(None)
        if len(kinds) == 1:
            found[field.name] = kinds.pop().capitalize()
        else:
            unknown.append(field.name)
    return found, tuple(unknown)


def _parquet_part(path: Path, base: Path) -> _Part:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"hf: cannot read parquet file {path}: {exc}") from None
    schema = pf.schema_arrow
    media: dict[str, str] = {}
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            features = json.loads(meta).get("info", {}).get("features", {})
            for col, feat in features.items():
                if isinstance(feat, dict) and feat.get("_type") in ("Audio", "Image"):
                    media[col] = feat["_type"]
        except (ValueError, AttributeError):
            media = {}

    def batches(columns: list[str]) -> Iterator[list[dict]]:
        for rb in pf.iter_batches(batch_size=BATCH, columns=columns):
            yield rb.to_pylist()

    def head(column: str) -> list:
        first = next(pf.iter_batches(batch_size=STRUCT_SAMPLE, columns=[column]), None)
        return first.column(0).to_pylist() if first is not None else []

    structs, unknown = _media_structs(schema, media, head)
    rel = os.path.relpath(path, base) if path != base else path.name
    return _Part(split=None, ref={"hf_file": rel}, columns=list(schema.names), media_types={**media, **structs},
                 batches=batches, unknown_structs=unknown)
