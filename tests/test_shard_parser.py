"""One shard parser (sharding.parser) with the error policy passed in, and verify's typed per-sample verdicts.

The training reader raises at the first problem and `uti verify` records it and carries on, but both see a
damaged shard through the same parser: the problem is worded once, and the reader's error carries verify's
finding. No Ray: the scan and the reader run in this process on shards written here.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sharding.errors import ShardError
from sharding.format import HEADER_MEMBER, read_index
from sharding.reader import read_shard
from test_shards import SPACE, make_sample, tar_path, write
from uti.token_space import canonical_json
from verify_helpers import read_raw, reindex, rewrite_shard


def _scan(out: Path, shard: str = "shard-000000", *, max_seq_len: int | None = None):
    from verify.checks import scan_shard
    from verify.dataset import ShardTask

    tar = tar_path(out, shard)
    task = ShardTask("train", shard, str(tar), str(tar.with_suffix(".json")), read_index(tar.with_suffix(".json")))
    return scan_shard(task, SPACE, max_seq_len=max_seq_len)


def _append_member(out: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    """Put a foreign member after the last sample (before the end-of-archive blocks) and reindex."""
    tar = tar_path(out)
    raw = tar.read_bytes()
    with tarfile.open(tar) as tf:
        last = tf.getmembers()[-1]
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    tar.write_bytes(raw[: last.offset_data + -(-last.size // 512) * 512] + extra.getvalue())
    reindex(out, "train", "shard-000000")


def _symlink(out: Path) -> None:
    info = tarfile.TarInfo("evil.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _append_member(out, info)


def _pickle(out: Path) -> None:
    info = tarfile.TarInfo("evil.pickle")
    info.size = 4
    _append_member(out, info, b"\x80\x04N.")


def _object_npy(out: Path) -> None:
    """An object-dtype header over sample 1's tokens (np.save would need to pickle): its bytes patched in place."""
    _, samples = read_raw(tar_path(out))
    good = samples[1].tokens
    buf = io.BytesIO()
    np.lib.format.write_array(buf, good, version=(1, 0), allow_pickle=False)
    hdr = b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
    fake = b"\x93NUMPY\x01\x00" + len(hdr.ljust(118) + b"\n").to_bytes(2, "little") + hdr.ljust(118) + b"\n"
    fake = fake + b"\0" * (len(buf.getvalue()) - len(fake))  # same length: the members keep their offsets
    raw = tar_path(out).read_bytes()
    tar_path(out).write_bytes(raw.replace(buf.getvalue(), fake, 1))
    reindex(out, "train", "shard-000000")


def _not_canonical_header(out: Path) -> None:
    """The same header with one space before its closing brace: still valid JSON, no longer canonical."""
    tar = tar_path(out)
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    members[0] = (members[0][0], members[0][1][:-1] + b" }")
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for info, data in members:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    reindex(out, "train", "shard-000000")


DAMAGES = {
    "symlink member": (_symlink, "is a symlink, not a regular file (type b'2')"),
    "pickle member": (_pickle, "unexpected member 'evil.pickle'"),
    "object-dtype npy": (_object_npy, "object-dtype .npy refused"),
    "header not canonical": (_not_canonical_header, f"{HEADER_MEMBER} is not canonical JSON"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_reader_and_verify_word_a_damaged_shard_the_same(tmp_path, damage):
    """One parser: verify records the very problem text the reader raises with (naming shard and member)."""
    out = tmp_path / "out"
    write(out, 3)
    make_damage, text = DAMAGES[damage]
    make_damage(out)
    with pytest.raises(ShardError) as exc:
        list(read_shard(tar_path(out), expected_token_space=SPACE, index=read_index(tar_path(out).with_suffix(".json"))))
    raised = str(exc.value)
    summary = _scan(out)
    details = [f.detail for examples in summary.findings.examples.values() for f in examples]
    recorded = [d for d in details if text in d]
    assert recorded, details  # verify carried on and recorded it...
    assert str(tar_path(out)) in raised and recorded[0] in raised, (raised, recorded)  # ...the reader raised it
    assert not summary.clean


def test_the_error_policy_is_a_parameter(tmp_path):
    """parse_header with a recording handler returns the header and keeps every problem; with raise_problem
    the first one is a ShardError naming the shard and the fix."""
    from sharding.parser import ShardProblem, parse_header, raise_problem

    write(tmp_path, 1)
    header, _ = read_raw(tar_path(tmp_path))
    header["token_space_id"] = "e" * 64  # does not hash to its token space
    data = canonical_json(header) + b" "  # and not canonical
    seen: list[ShardProblem] = []
    assert parse_header(data, "somewhere/shard-000000", seen.append) == header
    assert [(p.kind, p.problem.split(" (")[0]) for p in seen] == [
        ("integrity", f"{HEADER_MEMBER} is not canonical JSON"),
        ("token_space", f"header claims token space {'e' * 16} but its embedded token space hashes to "
                        f"{SPACE.id[:16]}"),
    ]
    with pytest.raises(ShardError, match=r"^somewhere/shard-000000: __header__\.json is not canonical JSON.*re-run"):
        parse_header(data, "somewhere/shard-000000", raise_problem)
    assert parse_header(b"{", "somewhere/shard-000000", seen.append) is None and "not valid JSON" in seen[-1].problem


def test_reader_arrays_stay_writable(tmp_path):
    """The shared fast .npy parse gives read-only views; the reader still hands out arrays of its own."""
    write(tmp_path, 3)
    samples = list(read_shard(tar_path(tmp_path), expected_token_space=SPACE))
    assert all(s.tokens.flags.writeable and s.text.flags.writeable for s in samples)
    expected = [make_sample(SPACE, i) for i in range(3)]
    assert all(np.array_equal(s.tokens, e["tokens"]) and np.array_equal(s.text, e["text"])
               for s, e in zip(samples, expected))


def test_sample_verdicts_are_typed_and_clean_is_explicit(tmp_path):
    """Each sample comes back as a SampleVerdict; a structural finding makes exactly that sample unclean, a
    soft one (lengths) does not, and a shard-level problem does not blame the samples."""
    from sharding.writer import write_shard
    from verify.checks import SampleVerdict

    out = tmp_path / "out"
    samples = [make_sample(SPACE, i) for i in (1, 2, 4, 5)]  # image and text samples, fit for every check
    for s in samples:
        if s["meta"]["modality"] == "image":
            s["meta"]["source_sha256"] = "a" * 64
    write_shard(out, split="train", shard="shard-000000", token_space=SPACE, samples=samples)

    def edit(header, samples):
        text_sample = next(s for s in samples if s.meta["modality"] == "text")
        text_sample.text = text_sample.text.copy()
        text_sample.text[0] = SPACE.range("image").start  # a text ID outside the text range: structural

    rewrite_shard(out, "train", "shard-000000", edit)
    _, samples = read_raw(tar_path(out))
    summary = _scan(out, max_seq_len=1)  # every sample also gets a (soft) lengths finding
    assert all(isinstance(v, SampleVerdict) for v in summary.samples)
    assert [v.key for v in summary.samples] == [s.key for s in samples]
    verdicts = {v.id: v for v in summary.samples}
    bad = next(s for s in samples if s.meta["modality"] == "text")
    assert not verdicts[bad.meta["id"]].clean
    assert all(v.clean for i, v in verdicts.items() if i != bad.meta["id"])
    assert summary.findings.counts["lengths"] == len(samples) and summary.findings.counts["token_ranges"] == 1
    assert {v.modality for v in summary.samples} == {"image", "text"}
    assert {v.source_sha256 for v in summary.samples} == {"a" * 64, None}
