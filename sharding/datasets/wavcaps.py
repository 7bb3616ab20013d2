"""WavCaps as it is distributed: `ROOT/json_files/<source>/*.json`, the clips in `ROOT/audio/<source>/<id>.flac`.

Sources are `FreeSound`, `BBC_Sound_Effects`, `SoundBible` and `AudioSet_SL`; their folders are matched
case-insensitively (unpacked archives differ) and IDs use the canonical spelling, so an ID does not
depend on how a folder was named. `json_files/blacklist/` is where WavCaps ships its blacklists, not a
source. A JSON is `{"num_captions_per_audio": 1, "data": [{"id", "caption", ...}]}` or, in older files,
the bare list.

Rules, and why:
- Canonical ID `wavcaps:{source}/{id}`: FreeSound and SoundBible ids are both small integers, so the
  source is part of the ID (the same id in two sources is two rows; twice in one source is one row, the
  second rejected by build_manifest as a duplicate).
- A trailing `.wav` is stripped from the id (AudioSet_SL ids are `Y7fmOlUlwoNg.wav`), for the file
  lookup, the ID and the blacklist alike: the clips are FLAC, and an ID should not name a format.
- The caption is `caption` only. `description` is the uploader's text (titles, gear, licences), kept in
  the row's extra with the other source fields a user may want (title, author, href, ...), never used
  as a caption.
- Duration: the audio header's; the JSON's `duration` (also kept as `json_duration`) when the header
  gives none.
- WavCaps has no splits: the split comes from hash_split of the canonical ID (as for LLaVA).
- `--blacklist FILE...` (the user's files: relative to the working directory) takes WavCaps' own
  blacklists, `{"FreeSound": [ids], "AudioSet": [ids]}`, or a bare list of ids for every source. Rows
  named there are rejected with the file's name, so the summary says why each one is gone.
- `--max-rows N` keeps the N rows with the smallest `subset_key` (SHA-256 of the salted canonical ID)
  among those whose audio was found and that were not rejected. The subset depends only on the set of
  IDs, not on file or row order; the subset for N is contained in the subset for any larger N (tokenize
  a subset first, then grow it); a row stays in it when rows are added unless one with a smaller key
  displaces it. The rows left out are counted in the summary's `subset`, not listed as rejected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from sharding.datasets.base import (
    DatasetAdapter,
    Item,
    hash_splits_option,
    media_row,
    register_dataset,
    require_dir,
)
from sharding.datasets.patterns import MediaFinder, NamePattern, parse_pattern
from sharding.manifest import SUBSET_OPTION, HashSplits, ManifestError, ManifestRow, Rejected, RowSubset, hash_split

log = logging.getLogger(__name__)

DATASET = "wavcaps"
SOURCES = ("FreeSound", "BBC_Sound_Effects", "SoundBible", "AudioSet_SL")
# Other spellings of a source: WavCaps' own blacklists key AudioSet_SL's ids as "AudioSet".
_SOURCE_NAMES = {**{s.lower(): s for s in SOURCES}, "audioset": "AudioSet_SL"}
JSON_DIR = "json_files"
BLACKLIST_DIR = "blacklist"
DEFAULT_PATTERN = "audio/{source}/{id}.flac"
PLACEHOLDERS = ("source", "id")
# Source fields kept in a row's extra (when present and not null); `duration` is kept as json_duration.
EXTRA_FIELDS = ("description", "title", "author", "href", "category", "tags", "file_name", "download_link")
JSON_SHAPE = ('{"num_captions_per_audio": 1, "data": [{"id": ..., "caption": ..., ...}]} '
              'or a bare list of {"id": ..., "caption": ...} objects')
BLACKLIST_SHAPE = ('an object {source: [ids]} (e.g. {"FreeSound": ["180913"], "AudioSet": ["Y7fmOlUlwoNg.wav"]}, '
                   "as WavCaps ships in json_files/blacklist/) or a bare list of ids")
# Salt of the --max-rows order: hash_split maps the unsalted SHA-256 of an ID to its split (splits laid out
# in name order), so the N smallest unsalted hashes would all land in the first split by name.
SUBSET_SALT = b"uti.max_rows\x00"


def canonical_source(name: str) -> str | None:
    """`FreeSound` for `freesound`, `AudioSet_SL` for `AudioSet`; None for anything else."""
    return _SOURCE_NAMES.get(name.strip().lower()) if isinstance(name, str) else None


def known_sources() -> str:
    return ", ".join(SOURCES)


def strip_wav(clip_id: str) -> str:
    """The id without a trailing `.wav` (any case): `Y7fmOlUlwoNg.wav` -> `Y7fmOlUlwoNg`."""
    return clip_id[:-4] if clip_id.lower().endswith(".wav") else clip_id


def subset_key(canonical_id: str) -> bytes:
    """The order --max-rows takes rows in (smallest first): SHA-256 of SUBSET_SALT + the canonical ID."""
    return hashlib.sha256(SUBSET_SALT + canonical_id.encode("utf-8")).digest()


def check_pattern(pattern: str) -> NamePattern:
    return parse_pattern(pattern, placeholders=PLACEHOLDERS, example=DEFAULT_PATTERN)


def max_rows_option(options: Mapping[str, Any]) -> int | None:
    value = options.get("max_rows")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ManifestError(f"wavcaps: --max-rows {value!r} must be a whole number >= 1 (the rows to keep)")
    return value


# ------------------------------------------------------------------------------------------- sources


def source_folders(root: Path, wanted: Sequence[str] | str | None) -> dict[str, Path]:
    """{canonical source: its folder under json_files/}: the `wanted` ones (any case), else every one present."""
    json_dir = root / JSON_DIR
    if not json_dir.is_dir():
        raise ManifestError(f"wavcaps: no {JSON_DIR}/ folder in {root}; point --root at the WavCaps folder "
                            f"holding {JSON_DIR}/<source>/*.json (sources: {known_sources()})")
    present = _present_sources(json_dir)
    if wanted is None:
        if not present:
            raise ManifestError(f"wavcaps: {json_dir} holds no source folder; expected one or more of "
                                f"{known_sources()} (any case), each with the source's *.json")
        return present
    picked: dict[str, Path] = {}
    for name in [wanted] if isinstance(wanted, str) else wanted:
        source = canonical_source(name)
        if source is None:
            raise ManifestError(f"wavcaps: --sources {name!r} is not a WavCaps source; known sources: "
                                f"{known_sources()} (any case)")
        if source not in present:
            raise ManifestError(f"wavcaps: source {source} has no JSON folder: expected {json_dir / source}/ "
                                "(any case) holding its *.json; check --root or leave it out of --sources")
        picked[source] = present[source]
    return picked


def _present_sources(json_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(json_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.lower() == BLACKLIST_DIR:
            continue
        source = canonical_source(entry.name)
        if source is None:
            log.debug("wavcaps: %s is not a source folder; skipped", entry.path)
            continue
        if source in found:
            raise ManifestError(f"wavcaps: {found[source]} and {entry.path} are both source {source}; keep one")
        found[source] = Path(entry.path)
    return found


def json_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    if not files:
        raise ManifestError(f"wavcaps: {folder} holds no *.json; put the source's JSON there (e.g. fsd_final.json) "
                            "or leave the source out with --sources")
    return files


def read_source_json(path: Path) -> list:
    """The entries of one source JSON: its `data` list, or the bare list."""
    try:
        with path.open("r", encoding="utf-8") as fh:
            # NaN/Infinity (Python's json.dump writes them) become null: a manifest holds only finite numbers.
            doc = json.load(fh, parse_constant=lambda _: None)
    except OSError as exc:
        raise ManifestError(f"wavcaps: cannot read {path}: {exc.strerror or exc}; check its permissions") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, absurd nesting
        raise ManifestError(f"wavcaps: {path} is not valid UTF-8 JSON ({exc}); expected {JSON_SHAPE}") from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        return doc["data"]
    if isinstance(doc, list):
        return doc
    what = "an object without a 'data' list" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
    raise ManifestError(f"wavcaps: {path} holds {what}; expected {JSON_SHAPE}")


# ----------------------------------------------------------------------------------------- blacklist


@dataclass(frozen=True)
class Blacklist:
    """(source, id) -> why the row is excluded; source None: listed for every source (a bare list)."""

    reasons: dict[tuple[str | None, str], str]

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike] | str | None) -> "Blacklist":
        reasons: dict[tuple[str | None, str], str] = {}
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths or ():
            reason = f"in blacklist {os.path.basename(os.fspath(path))}"
            for key in _blacklist_keys(Path(path)):
                reasons.setdefault(key, reason)  # the first file that names a row is the one reported
        return cls(reasons)

    def reason(self, source: str, clip_id: str) -> str | None:
        return self.reasons.get((source, clip_id)) or self.reasons.get((None, clip_id))


def _blacklist_keys(path: Path) -> Iterator[tuple[str | None, str]]:
    try:
        with path.open("r", encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise ManifestError(f"wavcaps: cannot read --blacklist {path}: {exc.strerror or exc}; give the path of "
                            f"a blacklist JSON ({BLACKLIST_SHAPE})") from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"wavcaps: --blacklist {path} is not valid UTF-8 JSON ({exc}); expected "
                            f"{BLACKLIST_SHAPE}") from None
    if isinstance(doc, list):
        groups: list[tuple[str | None, Any]] = [(None, doc)]
    elif isinstance(doc, dict):
        groups = []
        for key, ids in doc.items():
            source = canonical_source(key)
            if source is None:
                raise ManifestError(f"wavcaps: --blacklist {path}: key {key!r} is not a WavCaps source "
                                    f"({known_sources()} or AudioSet, any case); expected {BLACKLIST_SHAPE}")
            groups.append((source, ids))
    else:
        raise ManifestError(f"wavcaps: --blacklist {path} holds a JSON {type(doc).__name__}; "
                            f"expected {BLACKLIST_SHAPE}")
    for source, ids in groups:
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
            where = f"key {source!r}" if source else "the list"
            raise ManifestError(f"wavcaps: --blacklist {path}: {where} must be a list of ids (strings or "
                                f"integers); expected {BLACKLIST_SHAPE}")
        for clip_id in ids:
            yield source, strip_wav(str(clip_id).strip())


# ------------------------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Clip:
    """One JSON entry that names a clip: its source, id (`.wav` stripped), caption and kept fields."""

    source: str
    clip_id: str
    caption: str
    extra: dict
    json_duration: float | None

    @property
    def key(self) -> str:
        return f"{self.source}/{self.clip_id}"

    @property
    def item(self) -> str:
        return f"{DATASET}:{self.key}"


@dataclass(frozen=True, slots=True)
class Found:
    """A clip whose audio file was found: a candidate row."""

    clip: Clip
    path: Path


def parse_entry(entry: Any, source: str, where: str) -> Clip | Rejected:
    """The clip of one JSON entry, or why it is not one (`where`: the file and the entry's index)."""
    if not isinstance(entry, dict):
        return Rejected(item=where, reason=f"expected an object, got {type(entry).__name__}")
    raw_id = entry.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not strip_wav(str(raw_id).strip()):
        return Rejected(item=where, reason="missing or invalid 'id' (expected a non-empty string or integer)")
    clip_id = strip_wav(str(raw_id).strip())
    if "/" in clip_id or "\\" in clip_id:
        return Rejected(item=where, reason=f"id {clip_id!r} contains a path separator; an id names one file")
    item = f"{DATASET}:{source}/{clip_id}"
    caption = entry.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        return Rejected(item=item, reason=f"empty or missing 'caption' ({where})")
    extra: dict[str, Any] = {"source": source}
    extra.update((k, entry[k]) for k in EXTRA_FIELDS if entry.get(k) is not None)
    duration = entry.get("duration")
    json_duration = (float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool)
                     and math.isfinite(duration) and duration >= 0 else None)
    if json_duration is not None:
        extra["json_duration"] = json_duration
    return Clip(source=source, clip_id=clip_id, caption=caption.strip(), extra=extra, json_duration=json_duration)


# ------------------------------------------------------------------------------------------- adapter


@register_dataset
class WavCaps(DatasetAdapter):
    name = DATASET
    options = ("sources", "blacklist", "max_rows", "audio_pattern", "split_fractions")

    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        require_dir(root, self.name)
        hashing = hash_splits_option(options)
        self.check_splits(splits, hashing.fractions)
        pattern = check_pattern(options.get("audio_pattern") or DEFAULT_PATTERN)
        max_rows = max_rows_option(options)
        blacklist = Blacklist.load(options.get("blacklist"))
        folders = source_folders(root, options.get("sources"))
        finder = MediaFinder(root, follow_symlinks=follow_symlinks)
        found = self._found(root, folders, finder, pattern, blacklist, hashing.fractions, splits)
        if max_rows is None:
            for item in found:
                yield item if isinstance(item, Rejected) else self._row(item, hashing)
        else:
            record = options.get(SUBSET_OPTION)
            yield from self._subset(found, max_rows, hashing, record if isinstance(record, RowSubset) else None)

    def _found(
        self, root: Path, folders: Mapping[str, Path], finder: MediaFinder, pattern: NamePattern,
        blacklist: Blacklist, fractions: Mapping[str, float], splits: Sequence[str] | None,
    ) -> Iterator[Found | Rejected]:
        """Every entry of the sources' JSONs: the clip and its file, or why it is not a row. Entries of
        splits not asked for are skipped before the blacklist and the file lookup (as other adapters read
        only the requested splits' files)."""
        for source, folder in folders.items():
            for json_path in json_files(folder):
                shown = os.path.relpath(json_path, root)
                for index, entry in enumerate(read_source_json(json_path)):
                    clip = parse_entry(entry, source, f"{shown} entry {index}")
                    if isinstance(clip, Rejected):
                        yield clip
                        continue
                    if splits and hash_split(clip.item, fractions) not in splits:
                        continue
                    listed = blacklist.reason(source, clip.clip_id)
                    if listed:
                        yield Rejected(item=clip.item, reason=listed)
                        continue
                    values = [{"source": source, "id": clip.clip_id}]
                    path, problem = finder.locate(pattern, [""], values, item=clip.item)
                    yield problem if problem else Found(clip, path)

    def _subset(
        self, found: Iterable[Found | Rejected], max_rows: int, hashing: HashSplits, record: RowSubset | None
    ) -> Iterator[Item]:
        """Rejections as they come; then rows in subset_key order until `max_rows` are kept. A clip rejected
        here (a 0-byte file) does not count, so the subset is N rows whenever N are there. Repeats of a
        taken ID follow it, for build_manifest to reject as duplicates."""
        eligible: list[Found] = []
        for item in found:
            if isinstance(item, Rejected):
                yield item
            else:
                eligible.append(item)
        eligible.sort(key=lambda f: subset_key(f.clip.item))  # stable: repeats of one ID keep file order
        kept = taken = 0
        last: str | None = None
        for candidate in eligible:
            if candidate.clip.item == last:
                yield self._row(candidate, hashing)
                continue
            if kept == max_rows:
                break
            last, taken = candidate.clip.item, taken + 1
            row = self._row(candidate, hashing)
            kept += isinstance(row, ManifestRow)
            yield row
        if record is not None:
            record.max_rows = max_rows
            record.of = len({f.clip.item for f in eligible})
            record.left_out = record.of - taken

    def _row(self, found: Found, hashing: HashSplits) -> Item:
        clip = found.clip
        row = media_row(dataset=self.name, key=clip.key, modality="audio", path=found.path,
                        captions=[clip.caption], split=hashing(clip.item), extra=clip.extra)
        if isinstance(row, ManifestRow) and row.duration is None and clip.json_duration is not None:
            row = dataclasses.replace(row, duration=clip.json_duration)
        return row
