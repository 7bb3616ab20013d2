"""Song Describer: `ROOT/song_describer.csv` (caption_id, track_id, caption, is_valid_subset, familiarity,
artist_id, album_id, path, duration, ...; more columns may follow), one row per caption of a track.

Layout and rules:

- The audio ships as `ROOT/audio/NN/<track_id>.2min.mp3` (2-minute excerpts) while the CSV's `path` says
  `NN/<track_id>.mp3` (the full track's name). A row's file is looked up as `audio/NN/<stem>.2min.mp3`,
  then `audio/<path>` as written; when neither exists the track is reported missing naming both.
- All captions of one track become ONE sample, `song_describer:{track_id}`, captions ordered by numeric
  caption_id (the order the dataset assigned them). extra: caption_ids, is_valid_subset and familiarity
  (one entry per caption, same order), artist_id, album_id, path (as in the CSV), csv_duration (the CSV's
  `duration`, seconds of the full track; the row's own duration comes from the file's header).
- A track's file, artist and album come from its lowest caption_id. A caption whose `path` names another
  file is rejected (naming both paths): attaching it to the track's file could pair a caption with the
  wrong audio, and dropping the whole track would lose the captions that agree.
- `--valid-subset` keeps only captions with is_valid_subset true (the subset the dataset's authors
  checked for quality). A track left with none is not a row: it is filtered out like a row outside
  `--split`, not rejected (nothing is wrong with it); the count is logged.
- Song Describer is an evaluation set: every row's split is `test`, unless `--split-fractions` is given;
  then the split comes from the canonical ID's hash, as for LLaVA.
- A line whose caption_id is not an integer (or repeats one), whose track_id, caption or path is empty,
  or whose is_valid_subset is not true/false, is rejected naming its line.
"""

from __future__ import annotations

import logging
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    hash_splits_option,
    locate,
    media_row,
    register_dataset,
    require_dir,
)
from sharding.datasets.clotho import read_csv_dicts
from sharding.datasets.musiccaps import parse_bool
from sharding.manifest import ManifestError, Rejected

log = logging.getLogger(__name__)

CSV_NAME = "song_describer.csv"
AUDIO_FOLDER = "audio"
EXCERPT_SUFFIX = ".2min.mp3"
DEFAULT_SPLIT = "test"
REQUIRED_COLUMNS = ("caption_id", "track_id", "caption", "is_valid_subset", "path")


@dataclass(frozen=True)
class Caption:
    """One CSV line: a caption of a track, with the line it came from (for rejections)."""

    caption_id: int
    track_id: str
    caption: str
    valid: bool
    path: str
    familiarity: int | str | None
    artist_id: str
    album_id: str
    duration: float | None
    where: str


def audio_candidates(csv_path: str) -> list[str]:
    """`NN/x.mp3` -> [`audio/NN/x.2min.mp3`, `audio/NN/x.mp3`]: the excerpt the dataset ships, then the
    path as the CSV writes it."""
    stem = csv_path[: -len(EXCERPT_SUFFIX)] if csv_path.endswith(EXCERPT_SUFFIX) else posixpath.splitext(csv_path)[0]
    return list(dict.fromkeys([f"{AUDIO_FOLDER}/{stem}{EXCERPT_SUFFIX}", f"{AUDIO_FOLDER}/{csv_path}"]))


def _familiarity(text: str) -> int | str | None:
    value = text.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _csv_duration(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_caption(rec: Mapping[str, str], where: str) -> Caption | Rejected:
    track_id = rec["track_id"].strip()
    if not track_id:
        return Rejected(item=where, reason="empty track_id")
    item = f"song_describer:{track_id}"
    try:
        caption_id = int(rec["caption_id"].strip())
    except ValueError:
        return Rejected(item=item, reason=f"{where}: caption_id {rec['caption_id']!r} is not an integer")
    try:
        valid = parse_bool(rec["is_valid_subset"], "is_valid_subset")
    except ValueError as exc:
        return Rejected(item=item, reason=f"{where}: caption_id {caption_id}: {exc}")
    caption, path = rec["caption"].strip(), rec["path"].strip()
    if not caption:
        return Rejected(item=item, reason=f"{where}: caption_id {caption_id}: empty caption")
    if not path:
        return Rejected(item=item, reason=f"{where}: caption_id {caption_id}: empty path")
    return Caption(caption_id=caption_id, track_id=track_id, caption=caption, valid=valid, path=path,
                   familiarity=_familiarity(rec.get("familiarity", "")), artist_id=rec.get("artist_id", "").strip(),
                   album_id=rec.get("album_id", "").strip(), duration=_csv_duration(rec.get("duration", "")),
                   where=where)


@register_dataset
class SongDescriber(DatasetAdapter):
    name = "song_describer"
    options = ("valid_subset", "split_fractions")

    def check_splits(self, splits: Sequence[str] | None, fractions: Mapping[str, float] | None = None) -> None:
        """Without --split-fractions the one split is `test`; with them, the fractions' names."""
        known = tuple(fractions) if fractions else (DEFAULT_SPLIT,)
        bad = [s for s in splits or () if s not in known]
        if bad:
            how = "its splits are " + ", ".join(known) + (
                "" if fractions else " (an evaluation set; --split-fractions gives it others)")
            raise ManifestError(f"dataset {self.name!r} has no split(s) {', '.join(map(repr, bad))}; {how}")

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        require_dir(root, self.name)
        hashing = hash_splits_option(options) if options.get("split_fractions") is not None else None
        self.check_splits(splits, hashing.fractions if hashing else None)
        csv_path = root / CSV_NAME
        if not csv_path.is_file():
            raise ManifestError(f"song_describer: {csv_path} not found; point --root at the folder holding "
                                f"{CSV_NAME} and {AUDIO_FOLDER}/NN/<track_id>{EXCERPT_SUFFIX}")
        tracks: dict[str, list[Caption]] = {}
        for item in self._captions(csv_path):
            if isinstance(item, Rejected):
                yield item
            else:
                tracks.setdefault(item.track_id, []).append(item)
        if options.get("valid_subset"):
            tracks = self._valid_only(tracks)
        wanted = set(splits) if splits else None
        for track_id, captions in sorted(tracks.items()):
            split = hashing(f"{self.name}:{track_id}") if hashing else DEFAULT_SPLIT
            if wanted is None or split in wanted:
                yield from self._track(root, track_id, sorted(captions, key=lambda c: c.caption_id), split,
                                       follow_symlinks)

    @staticmethod
    def _captions(csv_path: Path) -> Iterator[Caption | Rejected]:
        seen: dict[int, str] = {}
        for lineno, rec in read_csv_dicts(csv_path, REQUIRED_COLUMNS):
            where = f"{CSV_NAME} line {lineno}"
            parsed = Rejected(item=where, reason=rec) if isinstance(rec, str) else parse_caption(rec, where)
            if isinstance(parsed, Caption) and parsed.caption_id in seen:
                parsed = Rejected(item=f"song_describer:{parsed.track_id}",
                                  reason=f"{where}: caption_id {parsed.caption_id} repeats "
                                         f"{seen[parsed.caption_id]}; kept the first")
            elif isinstance(parsed, Caption):
                seen[parsed.caption_id] = where
            yield parsed

    @staticmethod
    def _valid_only(tracks: dict[str, list[Caption]]) -> dict[str, list[Caption]]:
        kept = {t: [c for c in caps if c.valid] for t, caps in tracks.items()}
        dropped = [t for t, caps in kept.items() if not caps]
        if dropped:
            log.info("song_describer --valid-subset: %d of %d tracks have no valid caption and are left out",
                     len(dropped), len(tracks))
        return {t: caps for t, caps in kept.items() if caps}

    def _track(self, root: Path, track_id: str, captions: list[Caption], split: str,
               follow_symlinks: bool) -> Iterator[Item]:
        item = f"{self.name}:{track_id}"
        first = captions[0]
        agree = [c for c in captions if c.path == first.path]
        for c in captions:
            if c.path != first.path:
                yield Rejected(item=item, reason=f"{c.where}: caption_id {c.caption_id} names path {c.path!r} "
                                                 f"but the track's first caption (caption_id {first.caption_id}) "
                                                 f"names {first.path!r}; fix the CSV", path=c.path)
        path, problem = locate(root, audio_candidates(first.path), item=item, follow_symlinks=follow_symlinks)
        if problem:
            yield problem
            return
        yield media_row(
            dataset=self.name, key=track_id, modality="audio", path=path, captions=[c.caption for c in agree],
            split=split,
            extra={"caption_ids": [c.caption_id for c in agree], "is_valid_subset": [c.valid for c in agree],
                   "familiarity": [c.familiarity for c in agree], "artist_id": first.artist_id,
                   "album_id": first.album_id, "path": first.path, "csv_duration": first.duration},
        )
