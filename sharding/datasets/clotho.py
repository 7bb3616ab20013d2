"""Clotho: `clotho_captions_{split}.csv` (file_name, caption_1..caption_5), audio in `root/{split}/`.

This is the layout the official Zenodo archives extract to (`development/`, `validation/`,
`evaluation/` next to the CSVs). Official split names are kept. Canonical key: the file name.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    clean_captions,
    locate,
    media_row,
    register_dataset,
    split_files,
    require_dir,
)
from sharding.manifest import ManifestError, Rejected

CAPTION_COLUMNS = tuple(f"caption_{i}" for i in range(1, 6))
REQUIRED_COLUMNS = ("file_name", *CAPTION_COLUMNS)


def read_csv_dicts(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line number, row dict) per data row, or (line, reason) for a malformed row.

    utf-8-sig drops a BOM; newline='' lets the csv module handle CRLF and newlines inside quotes.
    """
    try:
        fh = path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: unreadable header ({exc}); the file must be UTF-8 CSV") from None
        if header is None:
            raise ManifestError(f"{path}: empty file; expected a header with columns {', '.join(required)}")
        header = [h.strip() for h in header]
        for col in required:
            if col not in header:
                raise ManifestError(
                    f"{path}: missing required column {col!r} (header has: {', '.join(header)}); "
                    f"the file needs columns {', '.join(required)}"
                )
        while True:
            start = reader.line_num + 1  # a quoted field may span lines; name the line the record starts on
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ManifestError(f"{path} line {start}: cannot parse CSV ({exc})") from None
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield start, (
                    f"has {len(values)} fields but the header has {len(header)}; check quoting of commas and quotes"
                )
                continue
            yield start, dict(zip(header, values))


@register_dataset
class Clotho(DatasetAdapter):
    name = "clotho"
    official_splits = ("development", "validation", "evaluation")
    object_store = True  # reads its layout through root / name, .is_file(), .open() only (object_root)

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        require_dir(root, self.name)
        self.check_splits(splits)
        present = split_files(
            root, self.name, {s: f"clotho_captions_{s}.csv" for s in splits or self.official_splits},
            explicit=bool(splits),
            none_found=f"no clotho_captions_{{development,validation,evaluation}}.csv in {root}; point --root at the "
                       "folder holding the CSVs and the per-split audio folders")
        for split, csv_path in present.items():
            for lineno, rec in read_csv_dicts(csv_path, REQUIRED_COLUMNS):
                where = f"{csv_path.name} line {lineno}"
                if isinstance(rec, str):
                    yield Rejected(item=where, reason=rec)
                    continue
                file_name = rec["file_name"].strip()
                if not file_name:
                    yield Rejected(item=where, reason="empty file_name")
                    continue
                item = f"{self.name}:{file_name}"
                captions = clean_captions(rec[c] for c in CAPTION_COLUMNS)
                if not captions:
                    yield Rejected(item=item, reason=f"{where}: no non-empty caption", path=file_name)
                    continue
                path, problem = locate(root, [f"{split}/{file_name}"], item=item, follow_symlinks=follow_symlinks)
                if problem:
                    yield problem
                    continue
                yield media_row(
                    dataset=self.name, key=file_name, modality="audio", path=path,
                    captions=captions, split=split,
                )
