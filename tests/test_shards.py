"""Shard format: writer/reader round trip, determinism, crash safety, listing, and hostile tars."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import stat
import tarfile
import tempfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from sharding.errors import ShardError, ShardTokenSpaceMismatch, ShardWriteError
from sharding.format import find_orphans, list_shards, read_index, sample_key
from sharding.manifest import write_manifest
from sharding.reader import ShardReader, read_shard
from sharding.writer import ShardWriter, write_shard
from uti.errors import TokenSpaceMismatch
from uti.token_space import CodecDescriptor, TokenSpace, canonical_json


# ---- fixtures ---------------------------------------------------------------------------------------
def make_space(image_seed: str = "random:0") -> TokenSpace:
    """A small token space (byte text, a 64-code image codec, two 32-code audio levels) without codec
    weights; other image weights give another space. Also used by test_outdir and test_format_examples."""
    return TokenSpace.build(
        text=CodecDescriptor(modality="text", kind="byte", name="bytes", weights="none", fingerprint="0" * 64,
                             params={"vocab_size": 256}),
        image=CodecDescriptor(modality="image", kind="vqgan", name="t", weights=image_seed, fingerprint="1" * 64,
                              params={"codebook_size": 64, "proc_size": [16, 16], "grid": [4, 4]}),
        audio=CodecDescriptor(modality="audio", kind="encodec", name="t", weights="random:0", fingerprint="2" * 64,
                              params={"n_q": 2, "codebook_size": 32, "sample_rate": 24000, "frame_rate": 75,
                                      "channels": 1, "bandwidth": 1.5}),
    )


SPACE = make_space()


def make_sample(space: TokenSpace, i: int, split: str = "train") -> dict:
    """Sample i: audio, image or text-only in turn, with IDs inside their ranges."""
    rng = np.random.default_rng(i)
    caption = f"caption number {i}"
    text = (space.range("text").start + np.frombuffer(caption.encode(), dtype=np.uint8)).astype(np.uint32)
    modality = ("audio", "image", "text")[i % 3]
    meta = {"id": f"test:{modality}/{i:04d}.x", "split": split, "modality": modality,
            "token_space_id": space.id, "captions": [caption], "caption_token_lengths": [len(text)]}
    if modality == "audio":
        n_frames = 3 + i % 4
        levels = [space.range(f"audio.l{k}") for k in range(2)]
        codes = rng.integers(0, 32, size=(n_frames, 2))
        tokens = np.array([levels[k].start + codes[f, k] for f in range(n_frames) for k in range(2)], dtype=np.uint32)
        meta.update(sample_rate=24000, n_frames=n_frames, n_q=2, n_samples=n_frames * 320)
    elif modality == "image":
        tokens = (space.range("image").start + rng.integers(0, 64, size=16)).astype(np.uint32)
        meta.update(proc_size=[16, 16], grid=[4, 4])
    else:
        tokens = np.zeros(0, dtype=np.uint32)
    return {"id": meta["id"], "tokens": tokens, "text": text, "meta": meta}


def write(out: str | Path, n: int = 5, *, shard: str = "shard-000000", split: str = "train", first: int = 0, space=SPACE, **kw) -> dict:
    samples = [make_sample(space, first + i, split) for i in range(n)]
    return write_shard(out, split=split, shard=shard, token_space=space, samples=samples, **kw)


def tar_path(out: Path, shard: str = "shard-000000", split: str = "train") -> Path:
    return out / "shards" / split / f"{shard}.tar"


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---- round trip and determinism ----------------------------------------------------------------------
def test_round_trip_is_exact_and_index_describes_the_tar(tmp_path):
    samples = [make_sample(SPACE, i) for i in range(6)]
    index = write_shard(tmp_path, split="train", shard="shard-000000", token_space=SPACE, samples=samples,
                        errors=[{"id": "test:bad", "stage": "decode", "reason": "corrupt"}], extra={"plan_sha256": "ab" * 32})
    path = tar_path(tmp_path)
    got = list(read_shard(path, expected_token_space=SPACE, index=index))
    assert len(got) == len(samples)
    for s, want in zip(got, samples):
        assert s.key == sample_key(want["id"])
        assert s.tokens.dtype == np.uint32 and np.array_equal(s.tokens, want["tokens"])
        assert s.text.dtype == np.uint32 and np.array_equal(s.text, want["text"])
        assert s.meta == want["meta"]
        assert (s.shard, s.split) == ("shard-000000", "train")
    assert got[2].tokens.size == 0  # text-only sample survives with an empty token array

    raw = path.read_bytes()
    assert index == read_index(path.with_suffix(".json"))
    assert index["num_samples"] == 6 and index["ids"] == [s["id"] for s in samples]
    assert index["token_counts"] == [len(s["tokens"]) for s in samples]
    assert index["text_token_counts"] == [len(s["text"]) for s in samples]
    assert index["tar_bytes"] == len(raw) and index["tar_sha256"] == hashlib.sha256(raw).hexdigest()
    assert index["errors"][0]["reason"] == "corrupt" and index["extra"] == {"plan_sha256": "ab" * 32}
    assert path.with_suffix(".json").read_bytes() == canonical_json(index)
    [ref] = list_shards(tmp_path)
    assert (ref.split, ref.name, ref.tar_path, ref.index) == ("train", "shard-000000", str(path), index)


def test_same_samples_give_byte_identical_tars(tmp_path):
    a = write(tmp_path / "a", 7)
    b = write(tmp_path / "b", 7)
    assert tar_path(tmp_path / "a").read_bytes() == tar_path(tmp_path / "b").read_bytes()
    assert a == b
    c = write(tmp_path / "c", 7, first=1)  # different content, different bytes
    assert c["tar_sha256"] != a["tar_sha256"]


def test_tar_members_order_and_fixed_attributes(tmp_path):
    samples = [make_sample(SPACE, i) for i in range(3)]
    write_shard(tmp_path, split="train", shard="shard-000042", token_space=SPACE, samples=samples)
    with tarfile.open(tar_path(tmp_path, "shard-000042")) as tf:
        members = tf.getmembers()
        header = json.loads(tf.extractfile(members[0]).read())
    expected = ["__header__.json"] + [f"{sample_key(s['id'])}.{ext}" for s in samples for ext in ("tokens.npy", "text.npy", "json")]
    assert [m.name for m in members] == expected
    for m in members:
        assert (m.type, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname) == (tarfile.REGTYPE, 0o644, 0, 0, 0, "", "")
    assert header == {
        "format": "uti.shard", "version": 1, "token_space_id": SPACE.id, "token_space": SPACE.to_dict(),
        "codec_fingerprints": {"audio": "2" * 64, "image": "1" * 64, "text": "0" * 64},
        "shard": "shard-000042", "split": "train", "producer": header["producer"],
    }
    assert header["producer"].startswith("uti ")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask077"])
def test_written_files_get_the_umask_mode_like_open(tmp_path, umask, mode):
    """Shards on a shared filesystem must be readable as the umask allows (mkstemp alone gives 0600)."""
    old = os.umask(umask)
    try:
        write(tmp_path, 3)
        SPACE.write(tmp_path)                                        # token space via uti.atomic
        write_manifest(tmp_path / "m.jsonl", [])                      # manifests, plan, errors, job.json: same path
        with open(tmp_path / "plain.txt", "w"):                      # what an ordinary open() gives
            pass
    finally:
        os.umask(old)
    written = [tar_path(tmp_path), tar_path(tmp_path).with_suffix(".json"), tmp_path / "token_space.json",
               tmp_path / "token_space.sha256", tmp_path / "m.jsonl", tmp_path / "plain.txt"]
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        str(p.relative_to(tmp_path)): oct(mode) for p in written
    }


# ---- crash safety and listing -------------------------------------------------------------------------
def test_half_written_shard_is_not_listed_but_reported(tmp_path):
    write(tmp_path, 3, shard="shard-000000")
    write(tmp_path, 3, shard="shard-000001", first=3)
    write(tmp_path, 3, shard="shard-000000", split="test", first=6)
    tar_path(tmp_path, "shard-000001").with_suffix(".json").unlink()  # crash between tar and index
    tar_path(tmp_path, "shard-000002").write_bytes(b"")                 # index-less tar of a crashed writer
    (tar_path(tmp_path).parent / ".shard-000003.tar.tmp-abc").write_bytes(b"x")
    (tar_path(tmp_path).parent / "shard-000004.json").write_bytes(tar_path(tmp_path).with_suffix(".json").read_bytes())

    assert [(r.split, r.name) for r in list_shards(tmp_path)] == [("test", "shard-000000"), ("train", "shard-000000")]
    assert [r.name for r in list_shards(tmp_path, "train")] == ["shard-000000"]
    kinds = [(o.name, o.kind) for o in find_orphans(tmp_path)]
    assert kinds == [("shard-000001", "tar_without_index"), ("shard-000002", "tar_without_index"),
                     ("shard-000003", "temp_file"), ("shard-000004", "index_without_tar")]


def test_invalid_or_mismatched_index_is_not_listed(tmp_path):
    write(tmp_path, 2)
    write(tmp_path, 2, shard="shard-000001", first=2)
    idx0 = tar_path(tmp_path).with_suffix(".json")
    idx0.write_bytes(idx0.read_bytes()[:-5])  # corrupt JSON
    with open(tar_path(tmp_path, "shard-000001"), "ab") as fh:
        fh.write(b"\0" * 512)  # tar no longer the size the index records
    assert list_shards(tmp_path) == []
    assert [o.kind for o in find_orphans(tmp_path)] == ["invalid_index", "size_mismatch"]
    with pytest.raises(ShardError, match="not valid UTF-8 JSON"):
        read_index(idx0)


def test_exception_inside_writer_leaves_no_files(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, split="train", shard="shard-000000", token_space=SPACE) as w:
            w.add(**make_sample(SPACE, 0))
            raise RuntimeError("boom")
    assert files_under(tmp_path) == []
    # a refused sample aborts the whole shard under write_shard as well
    with pytest.raises(ShardWriteError):
        write_shard(tmp_path, split="train", shard="shard-000000", token_space=SPACE,
                    samples=[make_sample(SPACE, 0), {**make_sample(SPACE, 1), "tokens": np.zeros(3, np.int64)}])
    assert files_under(tmp_path) == []


def test_rewrite_replaces_shard_and_index(tmp_path):
    write(tmp_path, 2)
    new = write(tmp_path, 4, first=10)
    assert [r.index for r in list_shards(tmp_path)] == [new]
    assert files_under(tmp_path) == ["shards/train/shard-000000.json", "shards/train/shard-000000.tar"]


# ---- write-time refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    np.arange(4, dtype=np.int64), np.arange(4, dtype=np.int32), np.arange(4, dtype=np.float32),
    np.arange(4, dtype=">u4"), [300, 301], np.zeros((2, 2), dtype=np.uint32),
], ids=["int64", "int32", "float32", "big-endian", "list", "2-D"])
def test_writer_refuses_anything_but_1d_uint32(tmp_path, bad):
    sample = make_sample(SPACE, 1)
    with ShardWriter(tmp_path, split="train", shard="shard-000000", token_space=SPACE) as w:
        with pytest.raises(ShardWriteError, match=r"test:image/0001\.x"):
            w.add(**{**sample, "tokens": bad})
        with pytest.raises(ShardWriteError, match="text"):
            w.add(**{**sample, "text": bad})
        w.add(**sample)  # the writer stays usable after a refused sample
    assert [s.key for s in read_shard(tar_path(tmp_path), expected_token_space=SPACE)] == [sample_key(sample["id"])]


def test_writer_refuses_out_of_range_ids(tmp_path):
    sample = make_sample(SPACE, 0)
    too_big = np.array([1, SPACE.vocab_size], dtype=np.uint32)
    with pytest.raises(ShardWriteError, match=f"ID {SPACE.vocab_size} >= vocab size {SPACE.vocab_size}"):
        write_shard(tmp_path, split="train", shard="shard-000000", token_space=SPACE, samples=[{**sample, "tokens": too_big}])
    ok = np.array([SPACE.vocab_size - 1], dtype=np.uint32)
    write_shard(tmp_path, split="train", shard="shard-000000", token_space=SPACE, samples=[{**sample, "tokens": ok}])


def test_writer_refuses_duplicates_and_foreign_meta(tmp_path):
    a, b = make_sample(SPACE, 0), make_sample(SPACE, 1)
    with ShardWriter(tmp_path, split="train", shard="shard-000000", token_space=SPACE) as w:
        w.add(key="k1", **a)
        with pytest.raises(ShardWriteError, match=r"duplicate key 'k1'.*test:audio/0000\.x.*test:image/0001\.x"):
            w.add(key="k1", **b)
        with pytest.raises(ShardWriteError, match="twice"):
            w.add(key="k2", **a)
        with pytest.raises(ShardWriteError, match="token_space_id"):
            w.add(**{**b, "meta": {**b["meta"], "token_space_id": "f" * 64}})
        with pytest.raises(ShardWriteError, match="split"):
            w.add(**{**b, "meta": {**b["meta"], "split": "test"}})
        with pytest.raises(ShardWriteError, match="modality"):
            w.add(**{**b, "meta": {k: v for k, v in b["meta"].items() if k != "modality"}})
        with pytest.raises(ShardWriteError, match="JSON"):
            w.add(**{**b, "meta": {**b["meta"], "n_frames": np.int64(3)}})
        with pytest.raises(ShardWriteError, match="safe member name"):
            w.add(key="a.b", **b)
        with pytest.raises(ShardWriteError, match="safe member name"):
            w.add(key="k" * 65, **b)
        w.close()
    with pytest.raises(ShardError, match="safe name"):
        ShardWriter(tmp_path, split="../x", shard="shard-000000", token_space=SPACE)
    with pytest.raises(ShardWriteError, match=r"errors\[0\]"):
        write(tmp_path, 1, shard="shard-000001", errors=["not a dict"])
    assert not list(tmp_path.glob("shards/train/shard-000001*"))


# ---- read-time refusals -------------------------------------------------------------------------------
def test_other_token_space_is_refused_naming_both_ids(tmp_path):
    write(tmp_path, 2)
    other = make_space(image_seed="random:1")
    with pytest.raises(ShardTokenSpaceMismatch) as exc:
        list(read_shard(tar_path(tmp_path), expected_token_space=other))
    msg = str(exc.value)
    assert SPACE.id[:16] in msg and other.id[:16] in msg and "codecs.image.weights" in msg
    assert isinstance(exc.value, ShardError) and isinstance(exc.value, TokenSpaceMismatch)
    with pytest.raises(ShardTokenSpaceMismatch, match=other.id[:16]):
        list(read_shard(tar_path(tmp_path), expected_token_space=other.id))
    with pytest.raises(ShardTokenSpaceMismatch, match=SPACE.id[:16]):
        ShardReader(tmp_path, expected_token_space=other)  # fails fast from the indexes


def _good_header(tmp_path: Path) -> bytes:
    write(tmp_path / "good", 1)
    with tarfile.open(tar_path(tmp_path / "good")) as tf:
        return tf.extractfile("__header__.json").read()


def _craft(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


class _CreatesFile:
    """Unpickling this creates a file: the proof that nothing was unpickled is that it does not exist."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_member_is_refused_unread(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(str(target)))
    header = _good_header(tmp_path)
    for members in ([(_reg("__header__.json"), header), (_reg("x.pickle"), payload)],
                    [(_reg("x.pickle"), payload)]):
        path = _craft(tmp_path / "evil" / "shard-000000.tar", members)
        with pytest.raises(ShardError, match=r"x\.pickle"):
            list(read_shard(path, expected_token_space=SPACE))
    assert not target.exists()
    pickle.loads(payload)  # sanity: the payload really would have created it
    assert target.exists()


def _sample_members(key: str, tokens: bytes | None = None) -> list[tuple[tarfile.TarInfo, bytes]]:
    s = make_sample(SPACE, 0)
    npy = io.BytesIO()
    np.save(npy, s["tokens"])
    text = io.BytesIO()
    np.save(text, s["text"])
    return [(_reg(f"{key}.tokens.npy"), tokens if tokens is not None else npy.getvalue()),
            (_reg(f"{key}.text.npy"), text.getvalue()), (_reg(f"{key}.json"), canonical_json(s["meta"]))]


def _symlink(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _object_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("case, match", [
    ("dotdot", "unsafe name"), ("absolute", "unsafe name"), ("symlink", "symlink"),
    ("object_npy", "object-dtype"), ("missing_json", "incomplete"), ("no_header", "first member"),
    ("duplicate_key", "duplicate sample key"), ("pth", "unexpected member"), ("directory", "directory"),
])
def test_hostile_tars_are_refused(tmp_path, case, match):
    header = [(_reg("__header__.json"), _good_header(tmp_path))]
    good = _sample_members("k1")
    members = {
        "dotdot": header + [(_reg("../evil.json"), b"{}")],
        "absolute": header + [(_reg("/tmp/evil.json"), b"{}")],
        "symlink": header + [(_symlink("k1.json"), b"")],
        "object_npy": header + _sample_members("k1", tokens=_object_npy()),
        "missing_json": header + good[:2] + _sample_members("k2"),
        "no_header": good,
        "duplicate_key": header + good + good,
        "pth": header + [(_reg("k1.pth"), b"PK\x03\x04")],
        "directory": header + [(_dirinfo("k1"), b"")],
    }[case]
    path = _craft(tmp_path / "evil" / "shard-000000.tar", members)
    with pytest.raises(ShardError, match=match) as exc:
        list(read_shard(path, expected_token_space=SPACE))
    assert str(path) in str(exc.value)


def _dirinfo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_member_size_limit_is_enforced_before_reading(tmp_path):
    write(tmp_path, 2)
    with pytest.raises(ShardError, match="above the 100-byte limit"):
        list(read_shard(tar_path(tmp_path), expected_token_space=SPACE, max_member_bytes=100))


def test_truncated_tar_raises(tmp_path):
    index = write(tmp_path, 6)
    raw = tar_path(tmp_path).read_bytes()
    cut = tmp_path / "cut" / "shard-000000.tar"
    cut.parent.mkdir()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ShardError, match="truncated"):
        list(read_shard(cut, expected_token_space=SPACE))
    # cut exactly after a complete sample: tarfile alone would stop quietly, we must not
    with tarfile.open(tar_path(tmp_path)) as tf:
        after_2nd = [m for m in tf.getmembers() if m.name.endswith(".json")][2]
        boundary = after_2nd.offset_data + -(-after_2nd.size // 512) * 512
    cut.write_bytes(raw[:boundary])
    with pytest.raises(ShardError, match="end-of-archive"):
        list(read_shard(cut, expected_token_space=SPACE))
    cut.write_bytes(raw[:boundary] + b"\0" * 1024)  # a forged end marker is caught by the index
    with pytest.raises(ShardError, match="2 samples, its index says 6"):
        list(read_shard(cut, expected_token_space=SPACE, index=index))


def test_tar_modified_after_writing_is_caught_by_the_index(tmp_path):
    index = write(tmp_path, 3)
    path = tar_path(tmp_path)
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tf:
        meta = [m for m in tf.getmembers() if m.name.endswith(".json")][1]
    raw[meta.offset_data + raw[meta.offset_data:].index(b"caption number") + 15] ^= 1  # same size, new text
    path.write_bytes(bytes(raw))
    assert len(list(read_shard(path, expected_token_space=SPACE))) == 3  # structurally fine...
    with pytest.raises(ShardError, match="modified after writing"):
        list(read_shard(path, expected_token_space=SPACE, index=index))  # ...but not what was indexed


def test_tampered_header_is_refused(tmp_path):
    write(tmp_path, 1)
    path = tar_path(tmp_path)
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    header = json.loads(members[0][1])
    header["token_space"]["ranges"][1]["size"] = 255
    members[0] = (members[0][0], canonical_json(header))
    path = _craft(tmp_path / "evil" / "shard-000000.tar", members)
    with pytest.raises(ShardError, match="hashes to"):
        list(read_shard(path, expected_token_space=None))


# ---- remote output -------------------------------------------------------------------------------------
def test_memory_filesystem_write_list_and_read(tmp_path, monkeypatch):
    # The writer stages a remote shard in the temp dir; a private one shows what this write left behind, not
    # what another process (a SIGKILLed writer in another test) left in the machine's /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = f"memory://uti-test-{uuid.uuid4().hex}/out"
    fs = fsspec.filesystem("memory")
    try:
        index = write(root, 4)
        write(root, 2, shard="shard-000001", first=4)
        fs.pipe_file(root.removeprefix("memory:/") + "/shards/train/shard-000002.tar", b"partial")
        refs = list_shards(root)
        assert [r.name for r in refs] == ["shard-000000", "shard-000001"]
        assert refs[0].tar_path.startswith("memory://") and refs[0].index == index
        assert [o.name for o in find_orphans(root)] == ["shard-000002"]
        got = list(ShardReader(root, expected_token_space=SPACE))
        assert [s.meta["id"] for s in got] == [make_sample(SPACE, i)["id"] for i in range(6)]
        assert np.array_equal(got[3].tokens, make_sample(SPACE, 3)["tokens"])
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".shard-000000.tar.tmp-")]
    finally:
        fs.rm(root.removeprefix("memory:/").rsplit("/", 1)[0], recursive=True)


# ---- Ray Data ------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_ray_dataset_reads_through_the_validating_reader(tmp_path, ray_session):
    from sharding.ray_reader import read_ray_dataset

    write(tmp_path, 4)
    write(tmp_path, 3, shard="shard-000001", first=4)
    write(tmp_path, 2, split="test", first=7)
    rows = read_ray_dataset(tmp_path, expected_token_space=SPACE, split="train").take_all()
    assert sorted(r["key"] for r in rows) == sorted(sample_key(make_sample(SPACE, i)["id"]) for i in range(7))
    by_id = {json.loads(r["meta_json"])["id"]: r for r in rows}
    for i in range(7):
        want = make_sample(SPACE, i)
        row = by_id[want["id"]]
        assert np.array_equal(np.asarray(row["tokens"], dtype=np.uint32), want["tokens"])
        assert np.array_equal(np.asarray(row["text"], dtype=np.uint32), want["text"])
        assert json.loads(row["meta_json"]) == want["meta"] and row["split"] == "train"
    with pytest.raises(ShardTokenSpaceMismatch):
        read_ray_dataset(tmp_path, expected_token_space=make_space("random:1"))
