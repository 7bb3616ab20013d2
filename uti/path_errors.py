"""One line for an OSError about a local path: the path, what is wrong with it and what to do.

Python's own text is the errno's ("Not a directory: 'bad/afile/sub'"), which names neither the part of
the path that is wrong nor the fix. Every `uti` command's output folders, files and inputs end up here
when the OS refuses them (uti.cli), so the explanation is written once for all of them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def blocking_file(path: str | os.PathLike) -> Path | None:
    """The nearest of `path` and its parents that exists as something other than a folder: what keeps
    a folder from being made at `path`. None when there is none."""
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            continue
    return None


def explain(exc: OSError, *, flag: str | None = None, given: str | os.PathLike | None = None) -> str:
    """`FLAG GIVEN (path): what is wrong; what to do`, where `flag` and `given` are how the user named
    the path (`--out bad/x`, or `OUT bad/x` for a positional) when the failing path is that one or lies
    under it; without them the failing path leads the line."""
    name = exc.filename
    if name is None:  # raised with a message of our own, not by the OS on a path
        return str(exc)
    path = os.fspath(name)
    if given is None:
        lead, here = path, ""
    else:
        lead = f"{flag} {os.fspath(given)}" if flag else os.fspath(given)
        here = "" if os.path.abspath(given) == os.path.abspath(path) else f" ({path})"
    code = exc.errno
    if isinstance(exc, NotADirectoryError) or code == errno.ENOTDIR:
        file = blocking_file(path)
        what = f"{file} is a file, not a folder" if file is not None else "a part of the path is a file, not a folder"
        return (f"{lead}{here}: {what}, so nothing can be made or found under it; give a path whose parent "
                f"folders are folders, or move the file away")
    if isinstance(exc, FileExistsError) or code == errno.EEXIST:
        file = blocking_file(path)
        if file is not None:
            return (f"{lead}{here}: {file} is an existing file where a folder is needed; give a new or existing "
                    f"folder, or move the file away")
        return f"{lead}{here}: already exists; give a new path, or remove it first"
    if isinstance(exc, IsADirectoryError) or code == errno.EISDIR:
        return f"{lead}{here}: is a folder where a file is needed; give a file path"
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return (f"{lead}{here}: permission denied; choose a location this user may use, or change the "
                f"permissions of {path}")
    if isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
        return f"{lead}{here}: does not exist; check the path (a relative one starts at {os.getcwd()})"
    if code == errno.ENOSPC:
        return f"{lead}{here}: no space left on the device; free space or choose another location"
    if code == errno.EROFS:
        return f"{lead}{here}: the file system is read-only; choose a writable location"
    return f"{lead}{here}: {exc.strerror or type(exc).__name__}"

