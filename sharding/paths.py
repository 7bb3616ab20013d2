"""Path confinement and atomic writes.

Every source path in a manifest comes from data we do not control (CSV cells, JSON fields), so it
is resolved with symlinks followed and must end inside the dataset root.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable

from uti.atomic import atomic_write
from uti.errors import UTIError


class PathEscapeError(UTIError, ValueError):
    """A dataset path is absolute or resolves (through `..` or a symlink) outside the dataset root."""


def resolve_inside(root: str | os.PathLike, relative: str | os.PathLike, *, allow_absolute: bool = False) -> Path:
    """Resolve `relative` against `root` (symlinks followed) and return it if it stays inside root.

    Absolute paths are refused unless `allow_absolute` (then they must still land inside root).
    """
    rel = os.fspath(relative)
    if not rel or "\x00" in rel:
        raise PathEscapeError(f"path {rel!r} is empty or contains a NUL byte; give a file path relative to {root}")
    if os.path.isabs(rel) and not allow_absolute:
        raise PathEscapeError(
            f"path {rel!r} is absolute; dataset paths must be relative to the dataset root {os.fspath(root)}"
        )
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, resolved]) != real_root:
        raise PathEscapeError(
            f"path {rel!r} resolves to {resolved}, outside the dataset root {real_root}; "
            "move the file inside the root or fix the path (no '..', no symlinks pointing out)"
        )
    return Path(resolved)


def find_file(root: str | os.PathLike, candidates: Iterable[str]) -> Path | None:
    """First candidate (relative to root) that is an existing file inside root, else None.

    Each candidate is also tried in NFC and NFD form: metadata is usually NFC while some
    filesystems (macOS, archives made there) store NFD names. Escapes raise PathEscapeError.
    """
    for cand in candidates:
        forms = dict.fromkeys([cand, unicodedata.normalize("NFC", cand), unicodedata.normalize("NFD", cand)])
        for form in forms:
            path = resolve_inside(root, form)
            if path.is_file():
                return path
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> Path:
    """Temp file next to `path`, fsync, os.replace: readers never see half a file (see uti.atomic)."""
    return atomic_write(path, data)
