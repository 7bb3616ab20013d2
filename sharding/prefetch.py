"""Bounded read-ahead of shard byte ranges from object stores (training reads).

A training rank knows which shards (and which samples of them) it reads next; on `s3://` each new shard
costs a round trip or several before its first byte arrives. `ShardPrefetcher` fetches the byte ranges of
the next few shards in background threads while the rank computes, and hands them to
`sharding.reader.read_shard` as a file object (`PrefetchedFile`). The parser is the same and reads the
same bytes, so which samples are read and in what order cannot change; any byte outside the fetched
ranges is read from the store directly (`PrefetchedFile` falls back to an ordinary open).

Bounds: at most `PrefetchLimits.shards` ranges are held (being fetched or fetched and not yet taken) and
at most `PrefetchLimits.bytes` bytes; a range that does not fit is simply not prefetched. Never the whole
dataset, never on local disk (the page cache does that job).
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from sharding.storage import filesystem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefetchLimits:
    """How far a rank reads ahead: 2 shards keeps the next shard arriving while one is parsed, without
    letting a slow consumer pile up memory; 256 MiB caps it for large shards (a larger range is read
    directly, streamed, as without prefetch). shards=0 turns read-ahead off."""

    shards: int = 2
    bytes: int = 256 * 2**20


DEFAULT_LIMITS = PrefetchLimits()


@dataclass(frozen=True)
class ByteRange:
    """The bytes of one shard a reader will need: the header member [0, header_end) (with some slack) and
    the samples [start, end) (end None: to the end of the object, so the reader's end-of-tar checks see the real end)."""

    path: str
    header_end: int
    start: int
    end: int | None
    size_hint: int  # bytes it will hold (end None: from the index's tar_bytes)

    @property
    def key(self) -> tuple[str, int]:
        return (self.path, self.start)


# Bytes read past a segment's last sample: tarfile reads in records, so a reader that stops after sample k
# has looked a little beyond it; without the slack that look would be one more round trip.
_SLACK = 64 * 1024


def shard_range(ref: Any, first: int, last: int, *, drains: bool) -> ByteRange | None:
    """The bytes a reader of samples first..last of a shard needs (ref: sharding.format.ShardRef); drains:
    the reader goes on to the end of the tar (its end checks). None for an index without member offsets."""
    from sharding.format import sample_offsets

    offsets = sample_offsets(ref.index)
    if not offsets or first >= len(offsets):
        return None
    tar_bytes = int(ref.index["tar_bytes"])
    header_end, start = int(offsets[0]), int(offsets[first])
    end = None if drains or last + 1 >= len(offsets) else int(offsets[last + 1]) + _SLACK
    if end is not None and end >= tar_bytes:
        end = None
    # The header is read in tar records too: fetch it with the same slack (one request when that reaches the samples).
    header_end = min(start, header_end + _SLACK)
    held = (tar_bytes if end is None else end) - start + (header_end if start > header_end else 0)
    return ByteRange(path=ref.tar_path, header_end=header_end, start=start, end=end, size_hint=held)


class PrefetchedFile:
    """A read-only, seekable file over fetched segments of one object; other bytes come from `opener()`."""

    def __init__(self, segments: list[tuple[int, bytes]], eof: int | None, opener: Callable[[], Any]):
        self._segments = sorted(segments)
        self._eof = eof  # the object's size when a segment reached its end, else unknown
        self._opener = opener
        self._fallback: Any = None
        self._pos = 0
        self.fallback_reads = 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        elif self._eof is not None:
            self._pos = self._eof + offset
        else:
            self._pos = self._real().seek(offset, 2)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        want = size if size is not None and size >= 0 else None
        out: list[bytes] = []
        while want is None or want > 0:
            chunk = self._read_some(want)
            if not chunk:
                break
            out.append(chunk)
            self._pos += len(chunk)
            if want is not None:
                want -= len(chunk)
        return b"".join(out)

    def _read_some(self, want: int | None) -> bytes:
        pos = self._pos
        if self._eof is not None and pos >= self._eof:
            return b""
        for start, data in self._segments:
            if start <= pos < start + len(data):
                stop = len(data) if want is None else min(len(data), pos - start + want)
                return data[pos - start: stop]
        later = [start for start, _ in self._segments if start > pos]
        gap = (later[0] - pos) if later else None
        n = gap if want is None else (want if gap is None else min(want, gap))
        real = self._real()
        real.seek(pos)
        self.fallback_reads += 1
        return real.read(-1 if n is None else n)

    def _real(self) -> Any:
        if self._fallback is None:
            self._fallback = self._opener()
        return self._fallback

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None
        self._segments = []

    def __enter__(self) -> "PrefetchedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fetch(r: ByteRange) -> PrefetchedFile:
    fs, path = filesystem(r.path)
    if r.start <= r.header_end:  # the samples follow the header (and its slack): one request
        body = fs.cat_file(path, 0, r.end)
        segments = [(0, body)]
        eof = len(body) if r.end is None else None
    else:
        header = fs.cat_file(path, 0, r.header_end)
        body = fs.cat_file(path, r.start, r.end)
        segments = [(0, header), (r.start, body)]
        eof = r.start + len(body) if r.end is None else None
    return PrefetchedFile(segments, eof, lambda: fs.open(path, "rb"))


class ShardPrefetcher:
    """Background fetches of the byte ranges a rank reads next, within PrefetchLimits."""

    def __init__(self, limits: PrefetchLimits = DEFAULT_LIMITS, *, fetch: Callable[[ByteRange], PrefetchedFile] = _fetch):
        self.limits = limits
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=max(1, limits.shards), thread_name_prefix="uti-prefetch")
        # key -> (fetch, bytes it holds, owner); owners (a rank's modality streams) share the limits
        self._held: collections.OrderedDict[tuple[str, int], tuple[Future, int, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.peak_held = 0  # most ranges held at once (tests check the bound)
        self.peak_bytes = 0
        self.requested = 0
        self.hits = 0

    def request(self, r: ByteRange, owner: Any = None) -> bool:
        """Start fetching `r` unless held already or over the limits; True when it is held."""
        with self._lock:
            if r.key in self._held:
                return True
            held_bytes = sum(n for _, n, _ in self._held.values())
            if len(self._held) >= self.limits.shards or held_bytes + r.size_hint > self.limits.bytes:
                return False
            self._held[r.key] = (self._pool.submit(self._fetch, r), r.size_hint, owner)
            self.requested += 1
            self.peak_held = max(self.peak_held, len(self._held))
            self.peak_bytes = max(self.peak_bytes, held_bytes + r.size_hint)
            return True

    def take(self, path: str, start: int) -> PrefetchedFile | None:
        """The fetched range of `path` starting at byte `start` (waits for it if still in flight), or None.
        A failed fetch is None too: the reader then opens the object itself and reports what fails."""
        with self._lock:
            entry = self._held.pop((path, start), None)
        if entry is None:
            return None
        try:
            result = entry[0].result()
        except Exception as exc:  # noqa: BLE001 - the direct read that follows raises the real error
            log.debug("prefetch of %s failed (%s); reading it directly", path, type(exc).__name__)
            return None
        self.hits += 1
        return result

    def retain(self, keys: set[tuple[str, int]], owner: Any = None) -> None:
        """Drop `owner`'s held ranges that are no longer coming up (their memory and their slot)."""
        with self._lock:
            for key in [k for k, (_, _, o) in self._held.items() if o is owner and k not in keys]:
                self._held.pop(key)[0].cancel()

    def close(self) -> None:
        with self._lock:
            for future, _, _ in self._held.values():
                future.cancel()
            self._held.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["ByteRange", "DEFAULT_LIMITS", "PrefetchLimits", "PrefetchedFile", "ShardPrefetcher", "shard_range"]
