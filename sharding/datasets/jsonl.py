"""Generic JSONL: one object per line with `id`, `modality`, `path` (relative to root; optional for
text), optional `captions` (list) or `caption` (string), optional `split`. Other keys go to `extra`.

`--root` is the folder paths are relative to; the JSONL is `--file` (relative to root or
absolute), or the only `*.jsonl` in root, or root itself when it is a `.jsonl` file. Rows without
a split get one from hash_split. The dataset name (ID prefix) defaults to `jsonl`; set `--name`
so several JSONL datasets can be tokenized together without ID clashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    clean_captions,
    locate,
    media_row,
    register_dataset,
    hash_splits_option,
)
from sharding.datasets.sniff import json_document_hint
from sharding.manifest import MODALITIES, HashSplits, ManifestError, ManifestRow, Rejected

KNOWN_KEYS = {"id", "modality", "path", "caption", "captions", "split"}


def dataset_name_option(options: dict[str, Any], default: str) -> str:
    name = options.get("name") or default
    if ":" in name or "/" in name or not name.strip():
        raise ManifestError(f"--name {name!r}: a dataset name must be non-empty without ':' or '/'")
    return name


def find_jsonl(root: Path, file: str | None) -> tuple[Path, Path]:
    """(data root, JSONL path) from --root and --file."""
    if root.is_file():
        if file:
            raise ManifestError(f"jsonl: --root {root} is a file, so --file cannot also be given")
        return root.parent, root
    if file:
        path = root / file
        if not path.is_file():
            raise ManifestError(f"jsonl: --file {path} not found")
        return root, path
    found = sorted(root.glob("*.jsonl")) if root.is_dir() else []
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise ManifestError(f"jsonl: expected exactly one *.jsonl in {root} (found {listing}); pass --file NAME")
    return root, found[0]


@register_dataset
class JSONLDataset(DatasetAdapter):
    name = "jsonl"
    options = ("file", "name", "split_fractions")

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        hashing = hash_splits_option(options)
        dataset = dataset_name_option(options, self.name)
        data_root, jsonl_path = find_jsonl(root, options.get("file"))
        hint = json_document_hint(jsonl_path)
        if hint:  # line 1 of a JSON document is no row: say what the file is and what reads it
            raise ManifestError(f"jsonl: {hint}")
        with jsonl_path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                where = f"{jsonl_path.name} line {lineno}"
                try:
                    text = raw.decode("utf-8")
                    if not text.strip():
                        continue
                    obj = json.loads(text)
                except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, over-long ints, absurd nesting
                    # A broken line means a broken file (truncated copy, wrong format): stop, don't guess.
                    raise ManifestError(f"{jsonl_path} line {lineno}: not valid UTF-8 JSON ({exc})") from None
                yield self._row(data_root, dataset, where, obj, hashing, follow_symlinks)

    def _row(
        self, root: Path, dataset: str, where: str, obj: Any, hashing: HashSplits, follow_symlinks: bool
    ) -> Item:
        if not isinstance(obj, dict):
            return Rejected(item=where, reason=f"expected a JSON object, got {type(obj).__name__}")
        raw_id = obj.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id) == "":
            return Rejected(item=where, reason="missing or invalid 'id' (a non-empty string or integer)")
        item = f"{dataset}:{raw_id}"
        modality = obj.get("modality")
        if modality not in MODALITIES:
            allowed = ", ".join(MODALITIES)
            return Rejected(item=item, reason=f"{where}: 'modality' must be one of {allowed}, got {modality!r}")
        captions = obj.get("captions", [])
        if "caption" in obj:
            captions = [obj["caption"], *(captions if isinstance(captions, list) else [])]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            return Rejected(item=item, reason=f"{where}: 'captions' must be a list of strings, 'caption' a string")
        captions = clean_captions(captions)
        split = obj.get("split")
        if split is not None and (not isinstance(split, str) or not split):
            return Rejected(item=item, reason=f"{where}: 'split' must be a non-empty string")
        split = split or hashing(item)
        extra = {k: v for k, v in obj.items() if k not in KNOWN_KEYS}
        rel = obj.get("path")
        if rel is None and modality == "text":
            if not captions:
                return Rejected(item=item, reason=f"{where}: a text row without 'path' needs 'caption(s)'")
            return ManifestRow(id=item, dataset=dataset, modality="text", path=None, captions=tuple(captions),
                               split=split, extra=extra)
        if not isinstance(rel, str) or not rel:
            return Rejected(item=item, reason=f"{where}: missing 'path' (relative to {root})")
        path, problem = locate(root, [rel], item=item, follow_symlinks=follow_symlinks)
        if problem:
            return problem
        return media_row(dataset=dataset, key=str(raw_id), modality=modality, path=path, captions=captions,
                         split=split, extra=extra)
