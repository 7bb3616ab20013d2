"""MusicCaps: `ROOT/musiccaps-public.csv` (ytid, start_s, end_s, audioset_positive_labels, aspect_list,
caption, author_id, is_balanced_subset, is_audioset_eval), one row per 10 s clip of a YouTube video.

Layout and rules:

- Audio is under `ROOT/audio/`, named by `--audio-pattern` with placeholders {ytid}, {start_s}, {end_s}
  (default `{ytid}.*`: any audio extension, since downloaders leave .m4a/.opus/.webm/.mp3 side by side;
  e.g. `{ytid}_{start_s}-{end_s}.wav` for cut clips). Times fill the pattern as `30` for 30.0, as written
  otherwise, and also as written in the CSV when that differs (`30.0`), so either spelling is found.
- Canonical ID `musiccaps:{ytid}`; the caption is `caption`.
- Split: `eval` when is_audioset_eval is true, else `train` (the dataset's own two subsets).
- The clip is `start_s..end_s` of the video. Downloads come as the whole video or already cut, and the
  header's length tells which (sharding.datasets.base.window_duration, sharding.media's rule): a file that
  is the clip gets no window and its own duration; a longer one (or one whose length the header does not
  give) records `extra.window = [start_s, end_s]`, so only that window is tokenized, and hints end - start.
- extra: ytid, start_s, end_s (seconds), aspect_list (the CSV's Python-list literal parsed into strings,
  without eval; kept as the raw text when it is not such a list), audioset_positive_labels (the comma
  separated AudioSet label IDs as a list), author_id, is_balanced_subset (bool).
- A CSV row with start/end that are not numbers or end <= start, a true/false column that is neither,
  an empty ytid or an empty caption is rejected naming its line; an absent clip is reported missing.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    audio_duration,
    media_row,
    register_dataset,
    require_dir,
    window_duration,
)
from sharding.datasets.clotho import read_csv_dicts
from sharding.datasets.patterns import MediaFinder, NamePattern, parse_pattern
from sharding.manifest import ManifestError, Rejected

CSV_NAME = "musiccaps-public.csv"
AUDIO_FOLDER = "audio"
REQUIRED_COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
                    "author_id", "is_balanced_subset", "is_audioset_eval")
DEFAULT_PATTERN = "{ytid}.*"
PLACEHOLDERS = ("ytid", "start_s", "end_s")
# A literal longer than this is not an aspect list (the longest real one is ~600 characters); the bound
# keeps ast.literal_eval away from pathological input.
MAX_ASPECT_LIST_CHARS = 10_000
_TRUE, _FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})


def check_pattern(pattern: str) -> NamePattern:
    return parse_pattern(pattern, placeholders=PLACEHOLDERS, example="{ytid}_{start_s}-{end_s}.wav")


def parse_bool(text: str, column: str) -> bool:
    """True/False in any case, or 1/0 (how pandas and hand edits write the CSV); ValueError otherwise."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{column} {text!r} is not True/False (or 1/0)")


def parse_seconds(text: str, column: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{column} {text!r} must be a finite number >= 0")
    return value


def seconds_text(value: float) -> str:
    """`30` for 30.0 (how downloaders name cut clips), `12.5` as it is."""
    return str(int(value)) if value == int(value) else repr(value)


def parse_aspect_list(text: str) -> list[str] | str:
    """`['low quality', 'sustained strings melody']` as a list of strings; the raw text when it is not a
    list literal of strings (never eval: literal_eval evaluates literals only, on a bounded string)."""
    raw = text.strip()
    if not raw:
        return []
    if len(raw) > MAX_ASPECT_LIST_CHARS or not raw.startswith("["):
        return text
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return text


def parse_labels(text: str) -> list[str]:
    """`/m/0140xf,/m/02cjck` as its AudioSet label IDs (which never contain a comma)."""
    return [label.strip() for label in text.split(",") if label.strip()]


@register_dataset
class MusicCaps(DatasetAdapter):
    name = "musiccaps"
    official_splits = ("train", "eval")
    options = ("audio_pattern",)

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        require_dir(root, self.name)
        self.check_splits(splits)
        pattern = check_pattern(options.get("audio_pattern") or DEFAULT_PATTERN)
        csv_path = root / CSV_NAME
        if not csv_path.is_file():
            raise ManifestError(f"musiccaps: {csv_path} not found; point --root at the folder holding {CSV_NAME} "
                                f"and the clips in {AUDIO_FOLDER}/")
        finder = MediaFinder(root, follow_symlinks=follow_symlinks)
        wanted = set(splits or self.official_splits)
        for lineno, rec in read_csv_dicts(csv_path, REQUIRED_COLUMNS):
            where = f"{CSV_NAME} line {lineno}"
            if isinstance(rec, str):
                yield Rejected(item=where, reason=rec)
                continue
            row = self._row(finder, pattern, where, rec, wanted)
            if row is not None:
                yield row

    def _row(self, finder: MediaFinder, pattern: NamePattern, where: str, rec: dict[str, str],
             wanted: set[str]) -> Item | None:
        ytid = rec["ytid"].strip()
        if not ytid:
            return Rejected(item=where, reason="empty ytid")
        item = f"{self.name}:{ytid}"
        try:
            start, end = parse_seconds(rec["start_s"], "start_s"), parse_seconds(rec["end_s"], "end_s")
            if end <= start:
                raise ValueError(f"end_s {rec['end_s'].strip()} must be after start_s {rec['start_s'].strip()}")
            is_eval = parse_bool(rec["is_audioset_eval"], "is_audioset_eval")
            balanced = parse_bool(rec["is_balanced_subset"], "is_balanced_subset")
        except ValueError as exc:
            return Rejected(item=item, reason=f"{where}: {exc}")
        split = "eval" if is_eval else "train"
        if split not in wanted:
            return None
        caption = rec["caption"].strip()
        if not caption:
            return Rejected(item=item, reason=f"{where}: empty caption")
        path, problem = finder.locate(pattern, [AUDIO_FOLDER], self._names(ytid, rec, start, end), item=item)
        if problem:
            return problem
        duration, window = window_duration(start, end, audio_duration(path))
        extra: dict[str, Any] = {
            "ytid": ytid, "start_s": start, "end_s": end,
            "aspect_list": parse_aspect_list(rec["aspect_list"]),
            "audioset_positive_labels": parse_labels(rec["audioset_positive_labels"]),
            "author_id": rec["author_id"].strip(), "is_balanced_subset": balanced,
        }
        if window is not None:
            extra["window"] = window
        return media_row(dataset=self.name, key=ytid, modality="audio", path=path, captions=[caption],
                         split=split, extra=extra, duration=duration)

    @staticmethod
    def _names(ytid: str, rec: dict[str, str], start: float, end: float) -> list[dict[str, str]]:
        """Pattern values: the times as `30`, then as the CSV writes them when that differs (`30.0`)."""
        values = [{"ytid": ytid, "start_s": seconds_text(start), "end_s": seconds_text(end)},
                  {"ytid": ytid, "start_s": rec["start_s"].strip(), "end_s": rec["end_s"].strip()}]
        return values if values[0] != values[1] else values[:1]
