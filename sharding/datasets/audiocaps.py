"""AudioCaps: `{train,val,test}.csv` (audiocap_id, youtube_id, start_time, caption).

Val/test list several captions per clip, one CSV row each; rows sharing (youtube_id, start_time)
become ONE sample whose captions are ordered by numeric audiocap_id. Canonical key:
`{youtube_id}_{start_time}`. Audio files are looked up under `root/{split}/` then `root/audio/`
with a configurable name pattern. Clips whose audio is absent (common: YouTube takedowns) are
reported as missing, not fatal.
"""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import (DatasetAdapter, Item, locate, media_row, register_dataset, require_dir,
                                    split_files)
from sharding.datasets.clotho import read_csv_dicts
from sharding.manifest import ManifestError, Rejected

REQUIRED_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
DEFAULT_PATTERN = "{youtube_id}_{start_time}.wav"
PLACEHOLDERS = ("youtube_id", "start_time", "audiocap_id")


def check_pattern(pattern: str) -> str:
    """Refuse patterns with unknown placeholders or format specs before touching any file."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ManifestError(f"--audio-pattern {pattern!r}: {exc}; use e.g. {DEFAULT_PATTERN!r}") from None
    fields = [f for f, _, _ in parsed]
    # Values are strings taken verbatim from the CSV, so format specs like {start_time:05d} cannot apply.
    bad = [f + (":" + spec if spec else "") + ("!" + conv if conv else "") for f, spec, conv in parsed
           if f not in PLACEHOLDERS or spec or conv]
    if bad or not fields:
        raise ManifestError(
            f"--audio-pattern {pattern!r}: placeholders must be among {{youtube_id}}, {{start_time}}, "
            f"{{audiocap_id}} (got {', '.join('{' + b + '}' for b in bad) or 'none'}); e.g. 'Y{{youtube_id}}.wav'"
        )
    return pattern


def normalize_start_time(text: str) -> str:
    """`30`, `30.0` and ` 30 ` are the same clip; keep non-integral times as written (`12.5`)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"start_time {text!r} must be a finite number >= 0")
    return str(int(value)) if value == int(value) else repr(value)


@register_dataset
class AudioCaps(DatasetAdapter):
    name = "audiocaps"
    official_splits = ("train", "val", "test")
    options = ("audio_pattern",)

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        require_dir(root, self.name)
        self.check_splits(splits)
        pattern = check_pattern(options.get("audio_pattern") or DEFAULT_PATTERN)
        present = split_files(root, self.name, {s: f"{s}.csv" for s in splits or self.official_splits},
                              explicit=bool(splits),
                              none_found=f"no train.csv, val.csv or test.csv in {root}; point --root at the folder "
                                         "holding them")
        for split, csv_path in present.items():
            yield from self._split_rows(root, split, csv_path, pattern, follow_symlinks)

    def _split_rows(
        self, root: Path, split: str, csv_path: Path, pattern: str, follow_symlinks: bool
    ) -> Iterator[Item]:
        clips: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for lineno, rec in read_csv_dicts(csv_path, REQUIRED_COLUMNS):
            where = f"{csv_path.name} line {lineno}"
            if isinstance(rec, str):
                yield Rejected(item=where, reason=rec)
                continue
            youtube_id = rec["youtube_id"].strip()
            try:
                audiocap_id = int(rec["audiocap_id"].strip())
                start = normalize_start_time(rec["start_time"].strip())
            except ValueError as exc:
                yield Rejected(item=where, reason=f"bad audiocap_id/start_time: {exc}")
                continue
            if not youtube_id:
                yield Rejected(item=where, reason="empty youtube_id")
                continue
            caption = rec["caption"].strip()
            if not caption:
                yield Rejected(item=where, reason=f"audiocap_id {audiocap_id}: empty caption")
                continue
            clips.setdefault((youtube_id, start), []).append((audiocap_id, caption))

        for (youtube_id, start), caps in sorted(clips.items()):
            caps.sort()
            key = f"{youtube_id}_{start}"
            item = f"{self.name}:{key}"
            ids = [a for a, _ in caps]
            names = dict.fromkeys(
                pattern.format(youtube_id=youtube_id, start_time=start, audiocap_id=a) for a in ids
            )
            candidates = [f"{split}/{n}" for n in names] + [f"audio/{n}" for n in names]
            path, problem = locate(root, candidates, item=item, follow_symlinks=follow_symlinks)
            if problem:
                yield problem
                continue
            yield media_row(
                dataset=self.name, key=key, modality="audio", path=path,
                captions=[c for _, c in caps], split=split,
                extra={"audiocap_ids": ids, "youtube_id": youtube_id, "start_time": start},
            )
