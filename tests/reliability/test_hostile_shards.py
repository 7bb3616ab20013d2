"""Hostile shards given to the reader, `uti verify` and `uti train`.

Each hostile tar sits in an output folder with an index that matches it byte for byte (size and
SHA-256), so it is listed as a complete shard and reaches the code under test. Each must be refused
with an error naming the shard; nothing may be unpickled (two payloads would create a file), executed
or written outside the run folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from sharding.errors import ShardError, ShardTokenSpaceMismatch
from sharding.format import build_header, build_index, list_shards, sample_key
from sharding.reader import ShardReader, read_shard
from uti.errors import UTIError
from uti.token_space import CodecDescriptor, TokenSpace, canonical_json, sha256_hex

from verify_helpers import verify_quick

from .conftest import snapshot

pytestmark = [pytest.mark.reliability]
REPORT_GROUP = "hostile shards"


class CreatesFile:
    """Unpickling this creates a file: that the file does not exist proves nothing was unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


# ---- crafting ---------------------------------------------------------------------------------------------------
def _npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _info(name: str, size: int, *, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode, info.mtime = size, kind, link, 0o644, 0
    return info


def _tar(members: list[dict]) -> bytes:
    """USTAR bytes written member by member, so a member can lie about its size or type."""
    out = bytearray()
    for m in members:
        data = m.get("data", b"")
        info = _info(m["name"], m.get("declared", len(data)) if m.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0,
                     kind=m.get("type", tarfile.REGTYPE), link=m.get("link", ""))
        out += info.tobuf(m.get("format", tarfile.USTAR_FORMAT), "utf-8", "surrogateescape")
        if "declared" in m:  # the lie: stop right here, the rest of the "2 GB" never comes
            return bytes(out + data)
        out += data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    out += b"\0" * (2 * tarfile.BLOCKSIZE)
    return bytes(out + b"\0" * (-len(out) % tarfile.RECORDSIZE))


def _sample_members(samples: list[dict]) -> list[dict]:
    members = []
    for s in samples:
        key = sample_key(s["id"])
        members += [{"name": f"{key}.tokens.npy", "data": _npy(s["tokens"])},
                    {"name": f"{key}.text.npy", "data": _npy(s["text"])},
                    {"name": f"{key}.json", "data": canonical_json(s["meta"])}]
    return members


def _header(space: TokenSpace, split: str, shard: str) -> bytes:
    return canonical_json(build_header(token_space=space, shard=shard, split=split, producer="uti hostile-test"))


def _crafted_header(space: TokenSpace, split: str, shard: str) -> tuple[bytes, str]:
    """A self-consistent header whose embedded token space holds a string where a size must be."""
    header = build_header(token_space=space, shard=shard, split=split, producer="uti hostile-test")
    header["token_space"]["codecs"]["text"]["params"]["vocab_size"] = "two hundred"
    header["token_space_id"] = sha256_hex(canonical_json(header["token_space"]))
    return canonical_json(header), header["token_space_id"]


def _other_space(space: TokenSpace) -> TokenSpace:
    d = space.to_dict()
    d["codecs"]["audio"]["weights"] = "random:1"
    d["codecs"]["audio"]["fingerprint"] = hashlib.sha256(b"other weights").hexdigest()
    return TokenSpace.from_dict(d)


# kind -> (what it is, reader message regex, `uti verify` finding regex)
KINDS: dict[str, tuple[str, str, str]] = {
    "dotdot_member": ("tar member named ../evil.json", r"'\.\./evil\.json' has an unsafe name", r"unsafe"),
    "symlink_member": ("tar member that is a symlink to /etc/passwd", r"is a symlink, not a regular file",
                       r"type b'2'"),
    "pyd_member": ("a .pyd member", r"unexpected member '[0-9a-f]+\.pyd'", r"unexpected member '[0-9a-f]+\.pyd'"),
    "pickle_member": ("a .pickle member (payload creates a file)", r"unexpected member '[0-9a-f]+\.pickle'",
                      r"unexpected member '[0-9a-f]+\.pickle'"),
    "other_token_space": ("header (and index) of another token space", r"token space", r"token space"),
    "crafted_header_params": ("self-consistent header, token space with a string size",
                              r"header token space is invalid", r"token space"),
    "member_2gb": ("member declaring 2 GB (file is small)", r"2147483648 bytes, above the", r"2147483648 bytes"),
    "int64_tokens": ("int64 tokens.npy", r"dtype int64", r"dtype int64"),
    "bigendian_tokens": ("big-endian uint32 tokens.npy", r"dtype >u4", r"dtype >u4"),
    "float32_text": ("float32 text.npy", r"dtype float32", r"dtype float32"),
    "object_npy": ("object-dtype .npy (payload creates a file)", r"object-dtype \.npy", r"object-dtype"),
    "npy_header_not_literal": (".npy header that is not a Python literal (found by fuzzing)",
                               r"not a valid \.npy payload", r"not a valid \.npy payload"),
    "nested_json_meta": ("meta JSON nested 100k deep", r"not valid UTF-8 JSON", r"not valid JSON"),
    "huge_int_meta": ("meta JSON with a 5000-digit integer", r"not valid UTF-8 JSON", r"not valid JSON"),
    "pax_member": ("pax extension header (long name)", r"extension header", r"type b'x'"),
}


def craft(kind: str, *, out: Path, split: str, shard: str, space: TokenSpace, samples: list[dict],
          sentinel: Path, current_index: bool = False) -> tuple[Path, dict]:
    """Write OUT/shards/{split}/{shard}.tar of `kind` and an index that describes it exactly: a version 1
    index, or with `current_index` the writer's own version (member offsets and sample modalities), which
    lets a reader skip straight to the samples it needs."""
    claimed = space.id
    if kind == "other_token_space":
        space = claimed_space = _other_space(space)
        claimed = claimed_space.id
        samples = [{**s, "meta": {**s["meta"], "token_space_id": claimed}} for s in samples]
    header = _header(space, split, shard)
    if kind == "crafted_header_params":  # the index claims the expected space: only the header lies
        header, _ = _crafted_header(space, split, shard)
    members = [{"name": "__header__.json", "data": header}] + _sample_members(samples)
    key = members[1]["name"].split(".")[0]
    payload = pickle.dumps(CreatesFile(str(sentinel)))
    if kind == "dotdot_member":
        members.insert(1, {"name": "../evil.json", "data": b"{}"})
    elif kind == "symlink_member":
        members[1] = {"name": members[1]["name"], "type": tarfile.SYMTYPE, "link": "/etc/passwd"}
    elif kind == "pyd_member":
        members.insert(1, {"name": f"{key}.pyd", "data": b"MZ\x90\x00" + bytes(60)})
    elif kind == "pickle_member":
        members.insert(1, {"name": f"{key}.pickle", "data": payload})
    elif kind == "member_2gb":
        members[1] = {"name": members[1]["name"], "declared": 2**31, "data": bytes(4096)}
        members = members[:2]
    elif kind == "int64_tokens":
        members[1]["data"] = _npy(samples[0]["tokens"].astype(np.int64))
    elif kind == "bigendian_tokens":
        members[1]["data"] = _npy(samples[0]["tokens"].astype(">u4"))
    elif kind == "float32_text":
        members[2]["data"] = _npy(samples[0]["text"].astype(np.float32))
    elif kind == "object_npy":
        members[1]["data"] = _npy(np.array([CreatesFile(str(sentinel)), 1], dtype=object), allow_pickle=True)
    elif kind == "npy_header_not_literal":  # numpy's header parser raised tokenize.TokenError on this
        good = members[1]["data"]
        size = int.from_bytes(good[8:10], "little")
        members[1]["data"] = good[:10] + (b"[" * 50).ljust(size - 1) + b"\n" + good[10 + size:]
    elif kind == "nested_json_meta":
        members[3]["data"] = b"[" * 100_000 + b"]" * 100_000
    elif kind == "huge_int_meta":
        members[3]["data"] = b'{"id":1' + b"9" * 5000 + b"}"
    elif kind == "pax_member":
        members.insert(1, {"name": f"{key}." + "x" * 120, "data": b"{}", "format": tarfile.PAX_FORMAT})
    elif kind not in ("other_token_space", "crafted_header_params"):
        raise ValueError(kind)
    raw = _tar(members)
    directory = out / "shards" / split
    directory.mkdir(parents=True, exist_ok=True)
    tar = directory / f"{shard}.tar"
    tar.write_bytes(raw)
    index = build_index(
        shard=shard, split=split, token_space_id=claimed, keys=[sample_key(s["id"]) for s in samples],
        ids=[s["id"] for s in samples], token_counts=[int(s["tokens"].size) for s in samples],
        text_token_counts=[int(s["text"].size) for s in samples], tar_bytes=len(raw),
        tar_sha256=hashlib.sha256(raw).hexdigest(), errors=[], extra={},
        **(_offsets_and_modalities(raw, samples) if current_index else {}))
    (directory / f"{shard}.json").write_bytes(canonical_json(index))
    return tar, index


def _offsets_and_modalities(raw: bytes, samples: list[dict]) -> dict:
    firsts: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for member in tf.getmembers():
            firsts.setdefault(member.name.split(".", 1)[0], member.offset)
    return {"offsets": [firsts[sample_key(s["id"])] for s in samples],
            "modalities": [s["meta"]["modality"] for s in samples]}


# ---- a small synthetic token space for the fast reader tests --------------------------------------------------
def _small_space() -> TokenSpace:
    return TokenSpace.build(
        text=CodecDescriptor(modality="text", kind="byte", name="bytes", weights="none", fingerprint="0" * 64,
                             params={"vocab_size": 256}),
        image=CodecDescriptor(modality="image", kind="vqgan", name="t", weights="random:0", fingerprint="1" * 64,
                              params={"codebook_size": 64, "proc_size": [16, 16], "grid": [4, 4]}),
        audio=CodecDescriptor(modality="audio", kind="encodec", name="t", weights="random:0", fingerprint="2" * 64,
                              params={"n_q": 2, "codebook_size": 32, "sample_rate": 24000, "frame_rate": 75,
                                      "channels": 1, "bandwidth": 1.5}))


def _small_samples(space: TokenSpace, split: str, n: int = 2) -> list[dict]:
    out = []
    for i in range(n):
        text = (space.range("text").start + np.frombuffer(f"cap {i}".encode(), np.uint8)).astype(np.uint32)
        tokens = (space.range("image").start + np.arange(16) % 64).astype(np.uint32)
        sid = f"hostile:img{i}"
        out.append({"id": sid, "tokens": tokens, "text": text, "meta": {
            "id": sid, "split": split, "modality": "image", "token_space_id": space.id, "captions": [f"cap {i}"],
            "caption_token_lengths": [int(text.size)], "proc_size": [16, 16], "grid": [4, 4]}})
    return out


SMALL = _small_space()


@pytest.mark.parametrize("kind", list(KINDS))
def test_reader_refuses_hostile_shard(kind, tmp_path, record):
    """The shard reader refuses each hostile tar naming the shard; nothing unpickled or written."""
    out, sentinel = tmp_path / "OUT", tmp_path / "pwned"
    tar, index = craft(kind, out=out, split="train", shard="shard-000000", space=SMALL,
                       samples=_small_samples(SMALL, "train"), sentinel=sentinel)
    before = snapshot(tmp_path)
    what, pattern, _ = KINDS[kind]
    messages = []
    for attempt in ("indexed", "bare"):
        with pytest.raises(ShardError) as exc:
            if attempt == "indexed":  # what training does: list the folder, read through the index
                list(ShardReader(str(out), expected_token_space=SMALL))
            else:  # and the tar alone, nothing known about it
                list(read_shard(tar, expected_token_space=SMALL))
        messages.append(str(exc.value))
    indexed, bare = messages
    assert str(tar) in indexed and re.search(pattern, indexed), indexed
    assert str(tar) in bare and re.search(pattern, bare), bare
    if kind == "other_token_space":  # refused from the index, before the tar is opened; both IDs named
        assert SMALL.id[:12] in indexed and index["token_space_id"][:12] in indexed, indexed
        assert isinstance(exc.value, ShardTokenSpaceMismatch)
    assert not sentinel.exists(), "a pickle payload ran"
    assert snapshot(tmp_path) == before, "reading wrote files"
    shown = re.sub(r"[0-9a-f]{24}", "KEY", re.sub(r"/\S*/", ".../", re.sub(r"^.*?shard-000000.tar: ", "", indexed)))
    record(f"reader: {what}", group=REPORT_GROUP, outcome=f"ShardError naming the shard: {shown[:90]}", lost=None,
           duplicates=None)


def test_pickle_payloads_are_live(tmp_path, record):
    """Sanity for the tests above: the payloads really would have created the file."""
    target = tmp_path / "made"
    pickle.loads(pickle.dumps(CreatesFile(str(target))))
    assert target.exists()
    target.unlink()
    np.load(io.BytesIO(_npy(np.array([CreatesFile(str(target))], dtype=object), allow_pickle=True)),
            allow_pickle=True)
    assert target.exists()
    record("control: the .pickle and object-.npy payloads used above", group=REPORT_GROUP,
           outcome="live: unpickling them (as trusted data) does create the file", lost=None, duplicates=None)


# ---- `uti verify` and `uti train` on a real output folder ----------------------------------------------------
def _real_samples(clean: Path, space: TokenSpace, kind: str, split: str) -> list[dict]:
    picked = []
    for s in ShardReader(str(clean), expected_token_space=space, split="train"):
        if s.meta["modality"] in ("audio", "image"):
            sid = f"evil:{kind}/{len(picked)}"
            picked.append({"id": sid, "tokens": s.tokens, "text": s.text,
                           "meta": {**s.meta, "id": sid, "split": split}})
        if len(picked) == 2:
            return picked
    raise AssertionError("the clean run has no media samples")


@pytest.fixture(scope="module")
def hostile_out(clean_run, tmp_path_factory):
    """A copy of the clean run with one extra shard per hostile kind in its train split."""
    base = tmp_path_factory.mktemp("hostile-out")
    out = base / "OUT"
    shutil.copytree(clean_run, out)
    space = TokenSpace.load(out)
    shards = {}
    for i, kind in enumerate(KINDS):
        shard = f"shard-{900 + i:06d}"
        craft(kind, out=out, split="train", shard=shard, space=space,
              samples=_real_samples(clean_run, space, kind, "train"), sentinel=base / "pwned")
        shards[kind] = f"train/{shard}"
    return {"base": base, "out": out, "space": space, "shards": shards, "sentinel": base / "pwned",
            "clean": clean_run}


def test_verify_fails_naming_every_hostile_shard(ray_session, hostile_out, record):
    """`uti verify` fails, and its report names each hostile shard with what is wrong with it."""
    base, out = hostile_out["base"], hostile_out["out"]
    report_dir = base / "report"
    before = snapshot(base)
    t0 = time.time()
    result = verify_quick(out, report_dir=str(report_dir))
    seconds = time.time() - t0
    report = json.loads(result.json_path.read_text())
    assert result.exit_code == 1 and not report["ok"]
    findings: dict[str, list[str]] = {}
    for check in report["checks"]:
        if check["hard"] and not check["ok"]:
            for ex in check["examples"]:
                findings.setdefault(ex["shard"], []).append(f"{check['name']}: {ex['detail']}")
    clean = {f"{r.split}/{r.name}" for r in list_shards(hostile_out["out"])} - set(hostile_out["shards"].values())
    for kind, label in hostile_out["shards"].items():
        details = findings.get(label, [])
        assert any(re.search(KINDS[kind][2], d) for d in details), (kind, details)
        shown = re.sub(r"[0-9a-f]{24}", "KEY", next(d for d in details if re.search(KINDS[kind][2], d)))
        record(f"verify: {KINDS[kind][0]}", group=REPORT_GROUP, outcome=f"exit 1, names {label}: {shown[:90]}",
               lost=None, duplicates=None)
    assert not set(findings) & clean - {None}, "a clean shard was blamed"
    assert not hostile_out["sentinel"].exists()
    after = snapshot(base, skip=(report_dir,))
    assert after == before, "verify wrote outside its report folder"
    record("verify: all hostile shards in one dataset", group=REPORT_GROUP,
           outcome=f"exit 1 in {seconds:.1f} s; every hostile shard named, no clean shard blamed", lost=None,
           duplicates=None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_stream_refuses_hostile_shard(kind, hostile_out, tmp_path, record):
    """What a `uti train` worker runs (BatchStream over ShardReader) refuses each hostile shard at once."""
    from train.config import TrainConfig
    from train.sequences import Specials
    from train.stream import BatchStream

    space, sentinel = hostile_out["space"], tmp_path / "pwned"
    out = tmp_path / "OUT"
    tar, _ = craft(kind, out=out, split="evil", shard="shard-000000", space=space,
                   samples=_real_samples(hostile_out["clean"], space, kind, "evil"), sentinel=sentinel)
    cfg = TrainConfig(data=(str(out),), out=str(tmp_path / "RUN"), split="evil", seq_len=1024, batch_size=1)
    with pytest.raises(UTIError) as exc:
        stream = BatchStream([{"out": str(out), "token_space_id": space.id}], cfg=cfg,
                             sp=Specials.from_space(space), vocab_size=space.vocab_size, rank=0, world_size=1)
        stream.next_batch()
    assert str(tar) in str(exc.value) or (kind == "other_token_space" and str(out) in str(exc.value)), str(exc.value)
    assert not sentinel.exists() and not (tmp_path / "RUN").exists()
    record(f"train stream: {KINDS[kind][0]}", group=REPORT_GROUP,
           outcome=f"{type(exc.value).__name__} before the first batch", lost=None, duplicates=None)


def test_uti_train_surfaces_a_hostile_shard_as_a_clear_error(ray_session, hostile_out, tmp_path, record):
    """A real `uti train` (Ray Train) on a hostile shard stops at the first step with our error, no hang."""
    from train.config import TrainConfig, TrainError
    from train.runner import train

    space, base = hostile_out["space"], tmp_path
    out, run, sentinel = base / "OUT", base / "RUN", base / "pwned"
    shutil.copytree(hostile_out["out"], out, ignore=shutil.ignore_patterns("shard-0009*"))
    tar, _ = craft("object_npy", out=out, split="evil", shard="shard-000000", space=space,
                   samples=_real_samples(hostile_out["clean"], space, "object_npy", "evil"), sentinel=sentinel,
                   current_index=True)  # the census reads what it needs from the index: the worker meets the shard
    before = snapshot(base)
    cfg = TrainConfig(data=(str(out),), out=str(run), split="evil", num_workers=1, steps=3, seq_len=1024,
                      batch_size=1, eval_texts=0)
    t0 = time.time()
    with pytest.raises(TrainError) as exc:
        train(cfg)
    seconds = time.time() - t0
    msg = str(exc.value)
    assert "training failed on a worker" in msg and str(tar) in msg and "object-dtype" in msg, msg
    assert not sentinel.exists()
    assert snapshot(base, skip=(run,)) == before, "train wrote outside its run folder"
    assert not (run / "checkpoints").exists()
    record("train (Ray Train, 1 worker): object-dtype .npy with a pickle payload", group=REPORT_GROUP,
           outcome=f"TrainError naming the shard after {seconds:.0f} s (step 1), nothing unpickled", lost=None,
           duplicates=None)


def test_index_with_a_huge_integer_is_an_orphan_not_a_crash(tmp_path, record):
    """A shard index holding a 5000-digit integer is reported as an invalid index, not a crash."""
    record("shard index with a 5000-digit integer (list_shards)", group=REPORT_GROUP, outcome="listed as an invalid_index orphan, not a crash",
           lost=None, duplicates=None)
    from sharding.format import find_orphans

    craft("int64_tokens", out=tmp_path, split="train", shard="shard-000000", space=SMALL,
          samples=_small_samples(SMALL, "train"), sentinel=tmp_path / "x")
    idx = tmp_path / "shards" / "train" / "shard-000000.json"
    idx.write_bytes(idx.read_bytes().replace(b'"extra":{}', b'"extra":{"n":1' + b"9" * 5000 + b"}"))
    assert list_shards(tmp_path) == []
    assert [o.kind for o in find_orphans(tmp_path)] == ["invalid_index"]
