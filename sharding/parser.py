"""The one shard parser: members, samples, token-ID arrays and the header of a shard tar.

Both the training reader (`sharding.reader`) and `uti verify` (`verify.checks`) parse shards with
this module; they differ only in what they do with a problem, and they pass that in, the way
webdataset passes `handler=`:

- A *fatal* problem (the tar cannot be parsed any further: broken member header, unexpected or
  out-of-order member, truncated sample) raises `TarBroken`. There is nothing to carry on with.
- A *recoverable* problem (a header that is not canonical, a token space that does not hash to its
  ID...) is a `ShardProblem` handed to `handler`: the reader's handler (`raise_problem`) raises it,
  verify's records it as a finding and returns, and parsing goes on.

Trust model: a shard is untrusted input. Members are parsed straight from their 512-byte USTAR
headers (our writer emits plain USTAR regular files only, see sharding.format); anything else
(pax/GNU extension headers, links, bad checksums, unsafe names, oversized members) is refused
before its payload is read, and nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
import re
from typing import Callable, Iterator

import numpy as np

from sharding.errors import ShardError
from sharding.format import HEADER_MEMBER, REGENERATE, SAMPLE_EXTENSIONS, TOKEN_DTYPE, is_safe_name, validate_header
from sharding.tario import BLOCK, TrackingReader
from uti.token_space import canonical_json, sha256_hex


# The fix a reader's message gives for a tar that holds what our writer never writes.
FOREIGN = ("only __header__.json, then {key}.tokens.npy, {key}.text.npy, {key}.json per sample, are allowed; "
           "this tar was not written by uti; do not use it")
OVERSIZED = "raise max_member_bytes if this shard is legitimate, otherwise regenerate it"


class TarBroken(Exception):
    """The tar cannot be parsed any further. str() says why (without the shard's name: verify records
    it as it is); `fix` is what a reader's error tells the user to do."""

    def __init__(self, message: str, fix: str = REGENERATE):
        super().__init__(message)
        self.fix = fix


class ShardProblem(ShardError):
    """A recoverable problem of one shard. str() is the full message (shard, problem, fix) a reader raises;
    `problem` is the bare text verify records as a finding, `kind` which part of the format it concerns
    ("integrity": the bytes or structure; "token_space": the header's token space)."""

    def __init__(self, message: str, *, problem: str, kind: str = "integrity"):
        super().__init__(message)
        self.problem = problem
        self.kind = kind

    @classmethod
    def at(cls, where: str, problem: str, *, kind: str = "integrity", fix: str = REGENERATE) -> "ShardProblem":
        return cls(f"{where}: {problem}; {fix}", problem=problem, kind=kind)


Handler = Callable[[ShardProblem], None]


def raise_problem(problem: ShardProblem) -> None:
    """The reader's policy: the first problem ends the read (training must never see a damaged shard)."""
    raise problem


# USTAR type flags other than a regular file, named for the message (the extension headers are how a
# tar smuggles a long name, a size or an unbounded payload past the per-member checks).
_NOT_REGULAR = {
    b"1": "a hard link", b"2": "a symlink", b"3": "a character device", b"4": "a block device",
    b"5": "a directory", b"6": "a FIFO", b"7": "a contiguous file", b"L": "a GNU long-name extension header",
    b"K": "a GNU long-link extension header", b"S": "a GNU sparse file", b"x": "a pax extension header",
    b"g": "a pax global extension header", b"X": "a Solaris extension header",
}


# ---- members ------------------------------------------------------------------------------------------
def iter_members(src: TrackingReader, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of each member, parsed straight from the 512-byte USTAR headers; sets
    `src.end_offset` at the end-of-archive block. Raises TarBroken.

    A 30-line parser does it because our shards are plain USTAR regular files only, and it is about
    twice as fast as `tarfile` in stream mode.
    """
    while True:
        offset = src.pos
        header = src.read(BLOCK)
        if len(header) < BLOCK:
            raise TarBroken("truncated tar: it ends inside a member header" if header else
                            "truncated tar: the end-of-archive marker is missing")
        if header.count(0) == BLOCK:
            src.end_offset = offset
            return
        stored = header[148:156].split(b"\0", 1)[0].strip()
        actual = sum(header[:148]) + 8 * 32 + sum(header[156:])
        try:
            if int(stored or b"-1", 8) != actual:
                raise ValueError
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise TarBroken(f"corrupt member header at byte {offset} (checksum or size field)") from None
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        kind = header[156:157]
        if kind not in (b"0", b"\0"):
            what = _NOT_REGULAR.get(kind, "an unknown member type")
            raise TarBroken(f"member {name!r} is {what}, not a regular file (type {kind!r}); "
                            "uti shards hold plain regular files only", FOREIGN)
        if header[345:500].strip(b"\0") or not name or "/" in name or "\\" in name or ".." in name:
            raise TarBroken(f"member {name!r} has an unsafe name (path separators, '..' or a USTAR prefix); "
                            "not written by uti", FOREIGN)
        if size > max_bytes:
            raise TarBroken(f"member {name!r} is {size} bytes, above the {max_bytes}-byte limit; refused unread",
                            OVERSIZED)
        padded = -(-size // BLOCK) * BLOCK
        data = src.read(padded)
        if len(data) < padded:
            raise TarBroken(f"truncated tar: member {name!r} has {min(len(data), size)} of {size} bytes")
        yield name, data[:size] if padded != size else data


def header_member(members: Iterator[tuple[str, bytes]]) -> bytes:
    """The payload of the first member, which must be the header. Raises TarBroken."""
    first = next(members, None)
    if first is None:
        raise TarBroken("empty tar")
    if first[0] != HEADER_MEMBER:
        raise TarBroken(f"first member is {first[0]!r}, expected {HEADER_MEMBER}", FOREIGN)
    return first[1]


def iter_samples(members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes, bytes, bytes]]:
    """(key, tokens.npy, text.npy, json payloads) of each sample after the header, in tar order.
    Raises TarBroken on any member that is not the next one of a sample (.pickle, .pth... refused unread)."""
    parts: list[bytes] = []
    key = ""
    for name, data in members:
        mkey, _, ext = name.partition(".")
        want = SAMPLE_EXTENSIONS[len(parts)]
        if name == HEADER_MEMBER or ext not in SAMPLE_EXTENSIONS or not is_safe_name(mkey):
            raise TarBroken(f"unexpected member {name!r}", FOREIGN)
        if (parts and mkey != key) or ext != want:
            incomplete = f"; sample {key} is incomplete" if parts else ""
            raise TarBroken(f"member {name!r} out of order (expected {(key if parts else mkey)}.{want}){incomplete}")
        key = mkey
        parts.append(data)
        if len(parts) == len(SAMPLE_EXTENSIONS):
            yield key, parts[0], parts[1], parts[2]
            parts = []
    if parts:
        raise TarBroken(f"truncated tar: sample {key} ends after {len(parts)} of {len(SAMPLE_EXTENSIONS)} members")


# ---- payloads -----------------------------------------------------------------------------------------
_NPY_U4 = re.compile(rb"\{'descr': '<u4', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")


def parse_ids(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """A 1-D little-endian uint32 .npy as a read-only view of `data` (never unpickled), or None and why not."""
    # Fast path: the exact header numpy writes for our arrays; anything else takes the careful path.
    if data[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        m = _NPY_U4.fullmatch(data, 10, end)
        if m is not None and len(data) == end + 4 * int(m.group(1)):
            return np.frombuffer(data, dtype=TOKEN_DTYPE, offset=end), None
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version != (1, 0):
            return None, f".npy format version {version}, expected (1, 0)"
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    # numpy parses the header dict of untrusted bytes with ast/tokenize: besides ValueError it can raise
    # SyntaxError, tokenize.TokenError, RecursionError... any failure means the payload is not ours.
    except Exception as exc:  # noqa: BLE001
        return None, f"not a valid .npy payload ({exc})"
    if dtype.hasobject:
        return None, "object-dtype .npy refused (loading it would unpickle)"
    if dtype != TOKEN_DTYPE or len(shape) != 1:
        return None, f"dtype {dtype} shape {shape}; token IDs must be 1-D little-endian uint32"
    offset = buf.tell()
    if len(data) != offset + shape[0] * 4:
        return None, f".npy is {len(data)} bytes, its header implies {offset + shape[0] * 4}"
    return np.frombuffer(data, dtype=TOKEN_DTYPE, offset=offset), None


def parse_header(data: bytes, where: str, handler: Handler) -> dict | None:
    """The header's JSON, structure (format.validate_header), canonical form and token-space hash.

    Returns the header, or None when it is unusable (not JSON, wrong structure: the problem went to
    `handler`); a non-canonical header or one whose token space does not hash to its ID goes to
    `handler` and, if the handler returns, the header is still returned.
    """
    try:
        header = validate_header(json.loads(data.decode("utf-8")), where)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, over-long ints, absurd nesting
        handler(ShardProblem.at(where, f"{HEADER_MEMBER} is not valid JSON ({exc})"))
        return None
    except ShardError as exc:  # its message already names the shard and the fix
        handler(ShardProblem(str(exc), problem=str(exc)))
        return None
    if canonical_json(header) != data:
        handler(ShardProblem.at(where, f"{HEADER_MEMBER} is not canonical JSON (edited after writing?)"))
    claimed = header["token_space_id"]
    actual = sha256_hex(canonical_json(header["token_space"]))
    if actual != claimed:
        handler(ShardProblem.at(where, f"header claims token space {claimed[:16]} but its embedded token space "
                                       f"hashes to {actual[:16]} (tampered or corrupt header)", kind="token_space"))
    return header


__all__ = ["TarBroken", "ShardProblem", "Handler", "raise_problem", "iter_members", "header_member", "iter_samples",
           "parse_ids", "parse_header"]
