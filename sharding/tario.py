"""Byte-level plumbing for reading shard tars: one pass counts, hashes and checks the archive's end.

Both the training reader and `uti verify` stream a tar once; size and SHA-256 must cost no second read,
and the end of the archive must be checked by hand (tarfile treats a missing end marker or trailing
garbage as a normal end).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import deque
from typing import Any

BLOCK = tarfile.BLOCKSIZE
MAX_TRAILING = 1024 * 1024  # after the end-of-archive blocks only record padding may follow


class TrackingReader:
    """Pass-through reader that counts bytes, optionally hashes them, and keeps the last few chunks so
    the bytes after the end-of-archive block can be checked."""

    def __init__(self, raw: Any, *, hash_bytes: bool = True, keep: int = 64 * 1024):
        self.raw = raw
        self.sha = hashlib.sha256() if hash_bytes else None
        self.pos = 0
        self.end_offset: int | None = None  # where the first end-of-archive block starts, once a parser saw it
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._kept = 0
        self._keep = keep

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        # Remote file objects may return short reads before EOF; only an empty read means the end.
        while 0 <= size and 0 < len(data) < size and (more := self.raw.read(size - len(data))):
            data += more
        if data:
            if self.sha is not None:
                self.sha.update(data)
            self._chunks.append((self.pos, data))
            self._kept += len(data)
            while self._kept - len(self._chunks[0][1]) >= self._keep:
                self._kept -= len(self._chunks.popleft()[1])
            self.pos += len(data)
        return data

    def since(self, offset: int) -> bytes | None:
        """Bytes from `offset` to the current position, or None if no longer kept."""
        if not self._chunks or self._chunks[0][0] > offset:
            return None if offset < self.pos else b""
        return b"".join(c for _, c in self._chunks)[offset - self._chunks[0][0]:]

    def end_problem(self, end_offset: int | None = None) -> str | None:
        """Our writer ends every tar with two zero blocks and record padding; anything else is damage.
        `end_offset` (default: self.end_offset) is where the first end-of-archive block starts.
        Raises OSError on read errors."""
        end_offset = self.end_offset if end_offset is None else end_offset
        tail = self.since(end_offset) if end_offset is not None else None
        if tail is None:
            return "cannot verify the end of the archive"
        while len(tail) <= MAX_TRAILING and (chunk := self.read(64 * 1024)):
            tail += chunk
        if len(tail) > MAX_TRAILING:
            return "unexpected data after the end of the archive"
        if len(tail) < 2 * BLOCK or tail.count(0) != len(tail) or self.pos % BLOCK:
            return "truncated tar: the end-of-archive marker is missing or damaged"
        return None

    def drain(self) -> None:
        while self.read(1 << 20):
            pass
