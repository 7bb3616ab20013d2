"""The dataset adapter interface, the adapter registry, and helpers shared by adapters."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

from sharding.manifest import (
    DEFAULT_SPLIT_FRACTIONS,
    HASH_SPLITS_OPTION,
    HashSplits,
    ManifestError,
    ManifestRow,
    Rejected,
    check_split_fractions,
)
from sharding.object_root import ObjectPath, ObjectRoot
from sharding.paths import PathEscapeError, find_file

log = logging.getLogger(__name__)

Item = ManifestRow | Rejected


class DatasetAdapter(ABC):
    """Turns one dataset layout under `root` into manifest rows (or `Rejected` items with a reason)."""

    name: ClassVar[str]
    # Keyword options `rows` accepts; anything else is refused before reading (typos never pass silently).
    options: ClassVar[tuple[str, ...]] = ()
    # Official split names, or None when splits come from hash_split.
    official_splits: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def rows(
        self, root: Path, *, splits: Sequence[str] | None = None, follow_symlinks: bool = False, **options: Any
    ) -> Iterator[Item]:
        """Yield a ManifestRow or Rejected per item. `splits` limits which splits are read.

        `follow_symlinks` (the --follow-symlinks flag) goes to every path lookup (locate): symlinks
        inside root are followed even when they lead out of it (see sharding.paths).
        """

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ManifestError(
                f"dataset {self.name!r} does not take option(s) {', '.join(unknown)} "
                f"(allowed: {allowed}); drop the flag(s)"
            )

    def check_splits(self, splits: Sequence[str] | None, fractions: Mapping[str, float] | None = None) -> None:
        """Refuse requested split names the dataset can never produce."""
        known = self.official_splits or tuple(fractions or DEFAULT_SPLIT_FRACTIONS)
        bad = [s for s in splits or () if s not in known]
        if bad:
            raise ManifestError(
                f"dataset {self.name!r} has no split(s) {', '.join(map(repr, bad))}; its splits are {', '.join(known)}"
            )


_REGISTRY: dict[str, DatasetAdapter] = {}


def register_dataset(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
    """Class decorator: make an adapter available by its `name`."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"dataset adapter {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_dataset(name: str) -> DatasetAdapter:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ManifestError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}") from None


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------------------------- helpers


def split_fractions_option(options: Mapping[str, Any]) -> dict[str, float]:
    value = options.get("split_fractions")
    return check_split_fractions(value if value is not None else DEFAULT_SPLIT_FRACTIONS)


def hash_splits_option(options: Mapping[str, Any]) -> HashSplits:
    """The hash split for rows without a split of their own: build_manifest's (which counts what it
    assigns), or one of the --split-fractions option when an adapter is called on its own."""
    given = options.get(HASH_SPLITS_OPTION)
    return given if isinstance(given, HashSplits) else HashSplits(split_fractions_option(options))


def size_hints(path: Path, modality: str) -> tuple[float | None, int | None]:
    """(duration seconds, bytes). Audio duration comes from the header only (audio_duration).

    Unreadable audio is not an error here: tokenization reports it per sample with the real reason.
    """
    if isinstance(path, ObjectPath):  # an object store: the size is in the listing, and no media is read
        return None, path.size()
    try:
        nbytes: int | None = os.stat(path).st_size
    except OSError:
        nbytes = None
    if modality != "audio":
        return None, nbytes
    return audio_duration(path), nbytes


def audio_duration(source: Any) -> float | None:
    """Duration from the header of a path or file-like object, or None if it cannot be read: libsndfile's
    frame count, else the container's duration (m4a, webm), never a decode of the whole file."""
    from uti.audio_decode import header_info  # imported here: only audio adapters read audio headers

    try:
        header = header_info(source)
    except Exception as exc:  # noqa: BLE001 - any decoder failure just means "unknown"
        log.debug("no duration for %s: %s", source, exc)
        return None
    # Formats without a length in the header report none; that is "unknown", not 0 s.
    return header.duration


def window_duration(start: float, end: float, file_duration: float | None) -> tuple[float, list[float] | None]:
    """(duration hint, window to record or None) for a clip [start, end] s of a file whose header gives
    `file_duration` (None: unknown), by sharding.media's window rule: a file that is already the clip
    records no window and hints its own length; a longer file (or one of unknown length) records the
    window and hints end - start. A file that is neither keeps the window too, so tokenization reports it
    per sample (window_outside) with the file's real length. ValueError for a malformed window."""
    from sharding.media import WINDOW_WHOLE, parse_window

    window = parse_window([start, end])
    if file_duration is not None and window.fit(file_duration) == WINDOW_WHOLE:
        return file_duration, None
    return window.length, window.to_list()


def locate(
    root: Path, candidates: Iterable[str], *, item: str, follow_symlinks: bool = False
) -> tuple[Path | None, Rejected | None]:
    """Find the first existing candidate inside root (symlinks out of it allowed if follow_symlinks).

    Returns (path, None), or (None, Rejected) for an escape (rejected) or an absent file (missing).
    """
    candidates = list(candidates)
    try:
        if isinstance(root, ObjectRoot):  # keys under the root prefix; object stores have no symlinks
            path = root.find(candidates)
        else:
            path = find_file(root, candidates, follow_symlinks=follow_symlinks)
    except PathEscapeError as exc:
        return None, Rejected(item=item, reason=str(exc), path=candidates[0] if candidates else None)
    if path is None:
        tried = ", ".join(candidates)
        return None, Rejected(item=item, reason=f"file not found (tried {tried})", path=candidates[0], missing=True)
    return path, None


def media_row(
    *,
    dataset: str,
    key: str,
    modality: str,
    path: Path,
    captions: Sequence[str],
    split: str,
    extra: dict | None = None,
    duration: float | None = None,
) -> Item:
    """The row of one media file, or its rejection when the file is empty: a 0-byte file is a failed
    download, and saying so here beats an "unreadable" error at tokenize time. `duration` replaces the
    header's (a clip window of a longer file)."""
    # A given duration spares the header read (the adapter has read it already).
    header_duration, nbytes = size_hints(path, modality if duration is None else "bytes")
    if nbytes == 0:
        return Rejected(item=f"{dataset}:{key}", reason="empty file, 0 bytes", path=str(path))
    return ManifestRow(
        id=f"{dataset}:{key}",
        dataset=dataset,
        modality=modality,
        path=str(path),
        captions=tuple(captions),
        split=split,
        duration=header_duration if duration is None else duration,
        bytes=nbytes,
        extra=extra or {},
    )


def clean_captions(values: Iterable[Any]) -> list[str]:
    """Non-empty captions with surrounding whitespace removed, in order."""
    out = []
    for v in values:
        if isinstance(v, str) and v.strip():
            out.append(v.strip())
    return out


def require_dir(root: Path, dataset: str) -> None:
    if not root.is_dir():
        raise ManifestError(f"{dataset}: dataset root {root} is not a directory; pass the dataset's folder with --root")


def split_files(root: Path, dataset: str, names: Mapping[str, str], *, explicit: bool, none_found: str) -> dict[str, Path]:
    """The per-split caption files present under `root` ({split: file name} in `names`).

    Splits asked for explicitly must all be there; otherwise at least one must be, and `none_found`
    says what was expected and the fix.
    """
    wanted = {split: root / name for split, name in names.items()}
    present = {split: path for split, path in wanted.items() if path.is_file()}
    if explicit and len(present) < len(wanted):
        absent = [str(path) for split, path in wanted.items() if split not in present]
        raise ManifestError(f"{dataset}: caption file(s) not found: {', '.join(absent)}; check --root and --split")
    if not present:
        raise ManifestError(f"{dataset}: {none_found}")
    return present
