"""Path confinement and atomic writes.

Every source path in a manifest comes from data we do not control (CSV cells, JSON fields), so by
default it is resolved with symlinks followed and must end inside the dataset root. A user whose
root holds a symlink to storage elsewhere opts in with `--follow-symlinks` (follow_symlinks=True):
then the path *text* must stay under the root (no `..` component, no absolute path outside it) and
symlinks met under the root are followed wherever they lead.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable

from uti.atomic import atomic_write
from uti.errors import UTIError

FOLLOW_SYMLINKS_FLAG = "--follow-symlinks"


class PathEscapeError(UTIError, ValueError):
    """A dataset path is absolute or resolves (through `..` or a symlink) outside the dataset root."""


def resolve_inside(
    root: str | os.PathLike, relative: str | os.PathLike, *, allow_absolute: bool = False, follow_symlinks: bool = False
) -> Path:
    """Resolve `relative` against `root` and return it if it stays inside root.

    Confined (default): symlinks are followed and the real path must be inside the real root; the
    real path is returned. follow_symlinks: the path text must name something under root (no `..`,
    see _under_root) and the path under the real root is returned, so reading it follows the links.
    Absolute paths are refused unless `allow_absolute` (then they must still be under root).
    """
    rel = os.fspath(relative)
    if not rel or "\x00" in rel:
        raise PathEscapeError(f"path {rel!r} is empty or contains a NUL byte; give a file path relative to {root}")
    if os.path.isabs(rel) and not allow_absolute:
        raise PathEscapeError(
            f"path {rel!r} is absolute; dataset paths must be relative to the dataset root {os.fspath(root)}"
        )
    real_root = os.path.realpath(root)
    if follow_symlinks:
        return _under_root(root, real_root, rel)
    resolved = os.path.realpath(os.path.join(real_root, rel))
    if not _within(real_root, resolved):
        raise PathEscapeError(_escape_message(rel, resolved, real_root))
    return Path(resolved)


def _within(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


def _under_root(root: str | os.PathLike, real_root: str, rel: str) -> Path:
    """The path under real_root that `rel` names, checked on its text only (symlinks are not resolved).

    `..` is refused outright: after a symlink the OS resolves `..` from the link's target, so no
    check on the text could tell where `link/../x` ends.
    """
    if ".." in Path(rel).parts:
        raise PathEscapeError(
            f"path {rel!r} contains '..'; with {FOLLOW_SYMLINKS_FLAG} a path must name a file under the dataset "
            f"root {real_root} without '..' (symlinks inside the root are followed, '..' never is)"
        )
    if os.path.isabs(rel):
        # An absolute path may spell the root as given (through a symlink) or as its real path.
        norm = os.path.normpath(rel)
        base = next((b for b in dict.fromkeys([real_root, os.path.abspath(root)]) if _within(b, norm)), None)
        if base is None:
            raise PathEscapeError(f"path {rel!r} is absolute and not under the dataset root {real_root}")
        rel = os.path.relpath(norm, base)
    return Path(os.path.normpath(os.path.join(real_root, rel)))


def _escape_message(rel: str, resolved: str, real_root: str) -> str:
    named_inside = ".." not in Path(rel).parts and _within(real_root, os.path.normpath(os.path.join(real_root, rel)))
    if named_inside:  # only a symlink under the root can have taken it out
        return (
            f"path {rel!r} leads through a symlink to {resolved}, outside the dataset root {real_root}; if that "
            f"link is intended, rerun `uti manifest` with {FOLLOW_SYMLINKS_FLAG} (symlinks inside the root are then "
            "followed; '..' and absolute paths outside the root stay refused), or move the files inside the root"
        )
    return (
        f"path {rel!r} resolves to {resolved}, outside the dataset root {real_root}; "
        "move the file inside the root or fix the path (no '..', no absolute paths outside the root)"
    )


def find_file(root: str | os.PathLike, candidates: Iterable[str], *, follow_symlinks: bool = False) -> Path | None:
    """First candidate (relative to root) that is an existing file inside root, else None.

    Each candidate is also tried in NFC and NFD form: metadata is usually NFC while some
    filesystems (macOS, archives made there) store NFD names. Escapes raise PathEscapeError.
    """
    for cand in candidates:
        forms = dict.fromkeys([cand, unicodedata.normalize("NFC", cand), unicodedata.normalize("NFD", cand)])
        for form in forms:
            path = resolve_inside(root, form, follow_symlinks=follow_symlinks)
            if path.is_file():
                return path
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> Path:
    """Temp file next to `path`, fsync, os.replace: readers never see half a file (see uti.atomic)."""
    return atomic_write(path, data)
