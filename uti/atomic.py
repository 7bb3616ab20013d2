"""Atomic local file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterable

# Temporary names are ".NAME.tmp-XXXX": hidden, and recognised (and cleaned) as leftovers of a killed writer.
TEMP_MARKER = ".tmp-"
_TEMP_ATTEMPTS = 100


def create_temp(directory: str | os.PathLike, name: str) -> tuple[int, str]:
    """Create and open (write-only) a new file `.{name}.tmp-XXXXXXXXXXXX` in `directory`: (fd, path).

    Unlike tempfile.mkstemp (always 0600), the file gets the mode an ordinary open() gives: 0666
    minus the process umask (and the directory's default ACL, if any). Outputs are shared data,
    not secrets: on a shared filesystem other users must be able to read what the umask allows.
    O_EXCL makes creation safe against an existing file or symlink of the same name.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        path = os.path.join(os.fspath(directory), f".{name}{TEMP_MARKER}{secrets.token_hex(6)}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{directory}: no free temporary name for {name} after {_TEMP_ATTEMPTS} attempts")


def atomic_write(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> Path:
    """Write to a temporary file next to `path`, fsync, then os.replace (mode: 0666 minus umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                for chunk in data:
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
