"""File-name patterns of the dataset adapters (`--audio-pattern`) and finding the file a pattern names.

A pattern is a relative path with placeholders (`{youtube_id}_{start_time}.wav`). Real downloads of one
dataset come in mixed formats (yt-dlp leaves `.m4a`, `.opus`, `.webm` and `.mp3` side by side), so the
extension may also be a choice:

- `.*`: any audio extension the readers decode, preferred in `ANY_AUDIO_PREFERENCE` order when one clip
  exists in two formats (lossless first, then the lossy formats from the least to the most degraded);
- `.{flac,mp3,opus}`: these extensions, preferred in the order given.

A choice is resolved against one listing of each folder (os.scandir), not by probing every extension of
every row: a 400k-file WavCaps folder is then read once instead of 4 million stat calls.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from sharding.manifest import ManifestError, Rejected
from sharding.object_root import ObjectRoot
from sharding.paths import PathEscapeError, resolve_inside

# Lossless first (the source as it was); then opus/vorbis, AAC and MP3 as YouTube serves them, best first.
ANY_AUDIO_PREFERENCE = ("flac", "wav", "aiff", "aif", "opus", "ogg", "oga", "m4a", "aac", "webm", "mp3")
ANY_EXTENSION = ".*"
_CHOICE = re.compile(r"\.\{\s*([A-Za-z0-9]+(?:\s*,\s*[A-Za-z0-9]+)*)\s*\}$")


@dataclass(frozen=True)
class NamePattern:
    """A parsed pattern: `template` is filled with str.format; `extensions` is the ordered extension choice
    appended after it (empty when the template carries its one extension itself)."""

    text: str
    template: str
    extensions: tuple[str, ...] = ()

    @property
    def is_choice(self) -> bool:
        return bool(self.extensions)

    def fill(self, values: Mapping[str, str]) -> str:
        """The relative path without the chosen extension (with the extension for a fixed pattern)."""
        return self.template.format(**values)

    def shown(self, filled: str) -> str:
        """A filled path as messages show it: `audio/x.*`, `audio/x.{flac,mp3}` or the path itself."""
        if not self.extensions:
            return filled
        if self.extensions == ANY_AUDIO_PREFERENCE:
            return filled + ANY_EXTENSION
        return filled + ".{" + ",".join(self.extensions) + "}"


def parse_pattern(text: str, *, placeholders: Sequence[str], example: str, flag: str = "--audio-pattern") -> NamePattern:
    """Refuse unknown placeholders and format specs before any file is touched; split off an extension choice."""
    if text.endswith(ANY_EXTENSION):
        template, extensions = text[: -len(ANY_EXTENSION)], ANY_AUDIO_PREFERENCE
    elif (m := _CHOICE.search(text)) is not None and m.group(1).strip() not in placeholders:  # `.{id}` fills
        template = text[: m.start()]
        extensions = tuple(dict.fromkeys(e.strip().lower() for e in m.group(1).split(",")))
    else:
        template, extensions = text, ()
    _check_template(text, template, placeholders, example, flag)
    return NamePattern(text=text, template=template, extensions=extensions)


def _check_template(text: str, template: str, placeholders: Sequence[str], example: str, flag: str) -> None:
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ManifestError(f"{flag} {text!r}: {exc}; use e.g. {example!r}") from None
    # Values are strings taken verbatim from the metadata, so format specs like {start_time:05d} cannot apply.
    bad = [f + (":" + spec if spec else "") + ("!" + conv if conv else "") for f, spec, conv in parsed
           if f not in placeholders or spec or conv]
    if bad or not parsed:
        allowed = ", ".join("{" + p + "}" for p in placeholders)
        got = ", ".join("{" + b + "}" for b in bad) or "none"
        raise ManifestError(f"{flag} {text!r}: placeholders must be among {allowed} (got {got}); e.g. {example!r}; "
                            "end it with '.*' for any audio extension or '.{flac,mp3}' for a list")
    if not os.path.basename(template) or template.endswith((".", "/")):
        raise ManifestError(f"{flag} {text!r}: the pattern must end in a file name; e.g. {example!r}")


@dataclass
class MediaFinder:
    """Finds the file of a row under `root` from a pattern; folder listings are read once and reused.

    Every found path is confined to root by the same rule as fixed names (sharding.paths), so a choice of
    extension never lets a symlink or `..` in the metadata out of the dataset.
    """

    root: Path
    follow_symlinks: bool = False
    _listings: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict, repr=False)

    def locate(
        self, pattern: NamePattern, folders: Sequence[str], values: Iterable[Mapping[str, str]], *, item: str
    ) -> tuple[Path | None, Rejected | None]:
        """The first match of the pattern filled with each of `values`, in each folder in order (`""` is
        root itself); else a Rejected that is `missing` (or names the escape)."""
        from sharding.datasets.base import locate  # base imports this module's users; keep the cycle lazy

        filled = [_join(folder, pattern.fill(v)) for folder in folders for v in values]
        filled = list(dict.fromkeys(filled))
        if not pattern.is_choice:
            return locate(self.root, filled, item=item, follow_symlinks=self.follow_symlinks)
        if isinstance(self.root, ObjectRoot):  # no cheap listing per folder here: ask for each name in order
            names = [f"{f}.{ext}" for f in filled for ext in pattern.extensions]
            return locate(self.root, names, item=item, follow_symlinks=self.follow_symlinks)
        for stem_path in filled:
            try:
                chosen = self._choose(stem_path, pattern.extensions)
            except PathEscapeError as exc:
                return None, Rejected(item=item, reason=str(exc), path=stem_path)
            if chosen is not None:
                return locate(self.root, [chosen], item=item, follow_symlinks=self.follow_symlinks)
        tried = ", ".join(pattern.shown(f) for f in filled)
        return None, Rejected(item=item, reason=f"file not found (tried {tried})", path=pattern.shown(filled[0]),
                              missing=True)

    def _choose(self, stem_path: str, extensions: Sequence[str]) -> str | None:
        folder, stem = os.path.split(stem_path)
        present = self._listing(folder).get(unicodedata.normalize("NFC", stem), {})
        for ext in extensions:
            if ext in present:
                return _join(folder, present[ext])
        return None

    def _listing(self, folder: str) -> dict[str, dict[str, str]]:
        """{NFC stem: {lower-case extension: file name}} of one folder under root (empty when absent)."""
        real = str(resolve_inside(self.root, folder or ".", follow_symlinks=self.follow_symlinks))
        if real not in self._listings:
            self._listings[real] = _scan(real)
        return self._listings[real]


def _scan(folder: str) -> dict[str, dict[str, str]]:
    index: dict[str, dict[str, str]] = {}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return index
    except OSError as exc:
        raise ManifestError(f"cannot list {folder}: {exc.strerror or exc}; check its permissions") from None
    for entry in entries:
        stem, dot, ext = entry.name.rpartition(".")
        if dot and stem and entry.is_file():  # a folder named like a clip is no clip
            index.setdefault(unicodedata.normalize("NFC", stem), {}).setdefault(ext.lower(), entry.name)
    return index


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def extension_of(path: str | None) -> str:
    """`.flac`, `.m4a`, ... in lower case, or `(none)`: how the manifest summary counts a row's file."""
    suffix = os.path.splitext(path or "")[1].lower()
    return suffix or "(none)"
