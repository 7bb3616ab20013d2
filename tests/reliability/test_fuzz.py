"""Property-based fuzzing (hypothesis, derandomized for CI): the shard reader and the token-space loader
on mutated inputs either read correctly or raise our own error types (uti.errors.UTIError), never
anything else.
"""

from __future__ import annotations

import collections
import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharding.reader import read_shard
from sharding.writer import write_shard
from uti.errors import UTIError
from uti.token_space import TokenSpace, canonical_json

from .test_hostile_shards import SMALL, _small_samples

pytestmark = [pytest.mark.reliability]
REPORT_GROUP = "fuzzing"
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Shard:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="uti-fuzz-"))
        samples = _small_samples(SMALL, "train", n=3)
        samples.append({"id": "hostile:text", "tokens": np.zeros(0, np.uint32), "text": samples[0]["text"],
                        "meta": {**samples[0]["meta"], "id": "hostile:text", "modality": "text"}})
        self.index = write_shard(self.dir, split="train", shard="shard-000000", token_space=SMALL, samples=samples)
        self.path = self.dir / "shards" / "train" / "shard-000000.tar"
        self.raw = self.path.read_bytes()
        self.samples = samples
        with tarfile.open(self.path) as tf:
            self.members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
        self.target = self.dir / "fuzzed" / "shard-000000.tar"  # same name: the header's shard name matches
        self.target.parent.mkdir()


@pytest.fixture(scope="module")
def shard():
    import shutil

    s = _Shard()
    yield s
    shutil.rmtree(s.dir, ignore_errors=True)


_OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _read(shard: _Shard, data: bytes, bucket: str) -> None:
    """Both ways a shard is read; anything but success or a UTIError fails the property."""
    shard.target.write_bytes(data)
    for index in (shard.index, None):
        try:
            got = list(read_shard(shard.target, expected_token_space=SMALL, index=index))
        except UTIError as exc:
            _OUTCOMES[bucket][type(exc).__name__] += 1
            continue
        _OUTCOMES[bucket]["read"] += 1
        if index is not None:  # read through its index: it must be exactly what was written
            assert [s.meta for s in got] == [s["meta"] for s in shard.samples]
            for s, want in zip(got, shard.samples):
                assert np.array_equal(s.tokens, want["tokens"]) and np.array_equal(s.text, want["text"])
        for s in got:  # read without it: still well-formed
            assert s.tokens.dtype == np.uint32 and s.text.dtype == np.uint32 and isinstance(s.meta, dict)


def _mutation(size: int):
    pos = st.integers(0, max(size - 1, 0))
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=700)),
        st.tuples(st.just("delete"), pos, st.integers(1, 700)),
        st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=64)),
    )


def _apply(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        pos = min(op[1], max(len(b) - 1, 0))
        if op[0] == "flip" and b:
            b[pos] ^= 1 << op[2]
        elif op[0] == "truncate":
            del b[pos:]
        elif op[0] == "insert":
            b[pos:pos] = op[2]
        elif op[0] == "delete":
            del b[pos:pos + op[2]]
        elif op[0] == "overwrite":
            b[pos:pos + len(op[2])] = op[2]
    return bytes(b)


def test_fuzz_shard_reader_on_mutated_bytes(shard, record):
    """Shard reader over bit flips, truncations, insertions, deletions of a valid shard's bytes."""

    @FUZZ
    @given(ops=st.lists(_mutation(len(shard.raw)), min_size=1, max_size=4))
    def prop(ops):
        _read(shard, _apply(shard.raw, ops), "bytes")

    prop()
    c = _OUTCOMES["bytes"]
    assert c["read"] + sum(v for k, v in c.items() if k != "read") == 400
    record("fuzz: shard reader, 200 byte-mutated shards x (with, without index)", group=REPORT_GROUP, runs=400,
           outcome="only reads or our errors: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())),
           lost=None, duplicates=None)


def _retar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fuzz_shard_reader_on_mutated_members(shard, record):
    """Shard reader over mutated member payloads inside a structurally valid tar (checksums fixed up)."""
    n = len(shard.members)

    @FUZZ
    @given(which=st.integers(0, n - 1), ops=st.lists(_mutation(300), min_size=1, max_size=3),
           splice=st.sampled_from([b"", b"9" * 40, b"[" * 50, b"\xff\xfe", b"NaN", b"-1", b'"', b"\x00"]))
    def prop(which, ops, splice):
        members = list(shard.members)
        name, data = members[which]
        mutated = _apply(data, ops)
        cut = len(mutated) // 2
        members[which] = (name, mutated[:cut] + splice + mutated[cut:])
        _read(shard, _retar(members), "members")

    prop()
    c = _OUTCOMES["members"]
    record("fuzz: shard reader, 200 member-mutated shards (valid tar structure)", group=REPORT_GROUP, runs=400,
           outcome="only reads or our errors: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())),
           lost=None, duplicates=None)


def test_fuzz_token_space_loader_on_mutated_bytes(record):
    """TokenSpace.from_json_bytes over byte-mutated canonical JSON."""
    raw = SMALL.canonical_json()
    seen: collections.Counter = collections.Counter()

    @FUZZ
    @given(ops=st.lists(_mutation(len(raw)), min_size=1, max_size=4))
    def prop(ops):
        data = _apply(raw, ops)
        try:
            space = TokenSpace.from_json_bytes(data, where="fuzzed")
        except UTIError as exc:
            seen[type(exc).__name__] += 1
            return
        seen["read"] += 1
        assert space.canonical_json() == data  # whatever loads is exactly what the bytes say

    prop()
    record("fuzz: token-space loader, 200 byte-mutated token_space.json", group=REPORT_GROUP, runs=200,
           outcome="only loads or our errors: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())),
           lost=None, duplicates=None)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def test_fuzz_token_space_loader_on_mutated_structure(record):
    """TokenSpace.from_json_bytes over canonical JSON whose values were replaced by arbitrary JSON: our error,
    or a space that is exactly what the bytes say (same canonical JSON, ID = their SHA-256) and, when the
    document was changed, never passes for the original (another ID)."""
    import hashlib

    base = SMALL.to_dict()
    paths = [p for p in _paths(base) if p]
    seen: collections.Counter = collections.Counter()

    @settings(FUZZ, report_multiple_bugs=False)
    @given(path=st.sampled_from(paths), value=JSON_VALUES)
    def prop(path, value):
        doc = json.loads(json.dumps(base))
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        raw = canonical_json(doc)
        try:
            space = TokenSpace.from_json_bytes(raw, where="fuzzed")
        except UTIError as exc:
            seen[type(exc).__name__] += 1
            return
        seen["read"] += 1
        assert space.canonical_json() == raw and space.to_dict() == doc, path
        assert space.id == hashlib.sha256(raw).hexdigest(), path
        assert (space.id == SMALL.id) == (doc == base), f"a changed {path} kept the original ID"

    prop()
    # teeth: most replacements break a required type or range and must be refused
    assert seen["TokenSpaceError"] > seen["read"], dict(seen)
    record("fuzz: token-space loader, JSON values replaced by arbitrary JSON", group=REPORT_GROUP, runs=200,
           outcome="only exact loads or our errors: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())),
           lost=None, duplicates=None)
