"""AudioCaps: `{train,val,test}.csv` (audiocap_id, youtube_id, start_time, caption).

Val/test list several captions per clip, one CSV row each; rows sharing (youtube_id, start_time)
become ONE sample whose captions are ordered by numeric audiocap_id. Canonical key:
`{youtube_id}_{start_time}`. Audio files are looked up under `root/{split}/` then `root/audio/`
with a configurable name pattern (sharding.datasets.patterns: `.*` takes any audio extension). Clips whose audio is absent (common: YouTube takedowns) are
reported as missing, not fatal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import DatasetAdapter, Item, media_row, register_dataset, require_dir, split_files
from sharding.datasets.clotho import read_csv_dicts
from sharding.datasets.patterns import MediaFinder, NamePattern, parse_pattern
from sharding.manifest import Rejected

REQUIRED_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
DEFAULT_PATTERN = "{youtube_id}_{start_time}.wav"
PLACEHOLDERS = ("youtube_id", "start_time", "audiocap_id")


def check_pattern(pattern: str) -> NamePattern:
    """Refuse patterns with unknown placeholders or format specs before touching any file."""
    return parse_pattern(pattern, placeholders=PLACEHOLDERS, example=DEFAULT_PATTERN)


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
        finder = MediaFinder(root, follow_symlinks=follow_symlinks)
        for split, csv_path in present.items():
            yield from self._split_rows(finder, split, csv_path, pattern)

    def _split_rows(self, finder: MediaFinder, split: str, csv_path: Path, pattern: NamePattern) -> Iterator[Item]:
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
            values = [{"youtube_id": youtube_id, "start_time": start, "audiocap_id": str(a)} for a in ids]
            path, problem = finder.locate(pattern, [split, "audio"], values, item=item)
            if problem:
                yield problem
                continue
            yield media_row(
                dataset=self.name, key=key, modality="audio", path=path,
                captions=[c for _, c in caps], split=split,
                extra={"audiocap_ids": ids, "youtube_id": youtube_id, "start_time": start},
            )
