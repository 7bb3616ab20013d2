"""Helpers of tests/test_verify.py: a small tokenized dataset, and tools to damage copies of it.

`build_dataset` writes OUT exactly as `uti tokenize` does (plan.json, token space, shards written by
sharding.writer with samples made by the job's own `sharding.format.build_sample`, errors.jsonl
rebuilt from the shard indexes, job.json),
but in-process and without Ray, so it costs one codec load. It can be swapped for the real job.

`rewrite_shard` edits samples inside a tar with a writer that does NOT validate (the real writer
refuses bad data), then rewrites the index so that its counts, keys, size and SHA-256 describe the
new tar: a test damages exactly one thing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from sharding.format import HEADER_MEMBER, Sample, build_sample
from sharding.manifest import ManifestRow, manifest_sha256, write_manifest
from sharding.media import AudioSpec, load_media
from sharding.outdir import claim_plan, claim_space, completed_shards, merge_errors, write_job
from sharding.plan import make_plan
from sharding.writer import write_shard
from uti.errors import MediaError
from uti.strict import to_dict
from uti.token_space import TokenSpace, canonical_json

DATASET = "synth"


@pytest.fixture(scope="module")
def ray_address(ray_session):
    """The address of the session's shared Ray (tests/conftest.py; import this fixture by name): CLI runs
    join it with --address.

    That instance is loopback-only (uti.ray_local.connect); a process joining it must run Ray in the same
    single-machine mode, or it looks for its raylet on the machine's routable IP and hangs. Subprocesses
    started while the module runs inherit the flag from this environment."""
    import ray._private.ray_constants as rc

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(rc.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        yield ray_session.get_runtime_context().gcs_address


# ---- sources -------------------------------------------------------------------------------------------
def _write_wav(path: Path, *, seconds: float, rate: int, channels: int, freq: float, seed: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    data = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)
    sf.write(path, data, rate)


def _write_png(path: Path, *, size: tuple[int, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    img = (base + 80 * np.sin(xx[..., None] / (3 + seed) + np.arange(3)) + 40 * (yy[..., None] / h)) % 256
    Image.fromarray(img.astype(np.uint8)).save(path)


def make_sources(src: Path, *, n_audio: int = 4, n_image: int = 3, dataset: str = DATASET,
                 seconds: tuple[float, float] = (0.25, 0.1)) -> list[ManifestRow]:
    """Synthetic WAVs (several rates, mono and stereo; clip i lasts seconds[0] + i * seconds[1]), PNGs, a
    text-only row and one corrupt WAV, as manifest rows of `dataset` split between train and val. The one
    builder of loose synthetic sources: the verify, codec and reliability tests all use it."""
    src.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    rates = (24000, 16000, 22050, 44100)
    first, step = seconds
    for i in range(n_audio):
        path = src / f"clip{i}.wav"
        length = first + step * i
        _write_wav(path, seconds=length, rate=rates[i % len(rates)], channels=1 + i % 2, freq=220.0 * (i + 1), seed=i)
        rows.append(ManifestRow(id=f"{dataset}:audio/clip{i}", dataset=dataset, modality="audio", path=str(path),
                                captions=(f"a tone number {i}", f"sound {i}") if i % 2 else (f"a tone number {i}",),
                                split="train" if i % 2 == 0 else "val", duration=length))
    for i in range(n_image):
        path = src / f"img{i}.png"
        _write_png(path, size=(48 + 16 * i, 64), seed=i)
        rows.append(ManifestRow(id=f"{dataset}:image/img{i}", dataset=dataset, modality="image", path=str(path),
                                captions=(f"a picture {i}",), split="train" if i % 2 == 0 else "val"))
    rows.append(ManifestRow(id=f"{dataset}:text/t0", dataset=dataset, modality="text", path=None,
                            captions=("only words here",), split="train"))
    broken = src / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    rows.append(ManifestRow(id=f"{dataset}:audio/broken", dataset=dataset, modality="audio", path=str(broken),
                            captions=("never decodes",), split="train", duration=1.0))
    return rows


def verify_quick(out: Path, **kw):
    """`uti verify` without the codec checks and plots (no codec load): for damaged copies, whose damage the
    structural checks find, and for outputs byte-identical to one that had the full checks. The report goes
    next to OUT (`OUT-verify/`) unless `report_dir` is given. The one quick verify of the suite."""
    from verify import VerifyConfig, run_verify

    cfg = {"decode_fraction": 0.0, "retokenize_fraction": 0.0, "plots": False, "loader_batches": 1,
           "report_dir": str(Path(out).parent / f"{Path(out).name}-verify"), **kw}
    return run_verify(VerifyConfig(out=str(out), **cfg))


# ---- the dataset ------------------------------------------------------------------------------------------
@dataclass
class BuiltDataset:
    out: Path
    manifest: Path
    rows: list[ManifestRow]
    space: TokenSpace
    errors: list[dict]


def build_dataset(out: Path, *, tokenizer, src: Path | None = None, target_samples: int = 2,
                  n_audio: int = 4, n_image: int = 3) -> BuiltDataset:
    """Write a tokenized dataset to `out` as `uti tokenize` does; `tokenizer` is a UnifiedTokenizer."""
    out = Path(out)
    src = Path(src) if src is not None else out.with_name(out.name + "-src")
    rows = make_sources(src, n_audio=n_audio, n_image=n_image)
    manifest = src / "manifest.jsonl"
    msha = write_manifest(manifest, rows)
    plan = make_plan(rows, manifest_sha256=msha, target_samples=target_samples)
    space = tokenizer.space
    claim_plan(out, plan)  # the job's own calls, in the job's order (ray_jobs.job)
    claim_space(out, space)
    cfg = tokenizer.config
    by_id = {r.id: r for r in rows}
    for split, sh in plan.shards():
        samples, errors = [], []
        for id_ in sh.ids:
            row = by_id[id_]
            try:
                samples.append(make_sample(tokenizer, row, split=split).to_dict())
            except MediaError as exc:
                errors.append({"id": id_, "path": row.path, "split": split, "shard": sh.name,
                               "stage": exc.stage, "reason": exc.reason, "detail": str(exc)})
        write_shard(out, split=split, shard=sh.name, token_space=space, samples=samples, errors=errors)
    all_errors = merge_errors(out, completed_shards(out, space, plan).values())  # rebuilt from the indexes, as the job does
    job = {
        "format": "uti.job", "version": 1, "complete": True, "token_space_id": space.id,
        "manifests": [{"path": str(manifest), "sha256": manifest_sha256(manifest)}],
        "manifest_sha256": plan.manifest_sha256, "plan_sha256": plan.sha256, "config": to_dict(cfg),
        "counts": {"planned": plan.num_samples, "samples": plan.num_samples - len(all_errors), "errors": len(all_errors)},
        "actors": {"count": 1, "device": "cpu"},
    }
    write_job(out, job)
    return BuiltDataset(out=out, manifest=manifest, rows=rows, space=space, errors=all_errors)


def make_sample(tok, row: ManifestRow, *, split: str) -> Sample:
    """One row as the tokenize job makes it (its read tasks' `load_media`, the codec, `build_sample`),
    one at a time; a row whose media does not load raises its MediaError."""
    text, lengths = tok.encode_captions(row.captions)
    if row.modality == "text":
        return build_sample(row, split=split, token_space_id=tok.space.id, tokens=np.zeros(0, np.uint32), text=text,
                            caption_token_lengths=lengths)
    media = load_media(row, spec=AudioSpec(sample_rate=tok.audio.sample_rate, channels=tok.audio.channels),
                       proc_size=tok.image.proc_size[0], limits=tok.config.limits)
    encode = tok.encode_audios if row.modality == "audio" else tok.encode_images
    ids, codec_meta = encode([media.data])[0]
    return build_sample(row, split=split, token_space_id=tok.space.id, tokens=ids, text=text,
                        caption_token_lengths=lengths, codec_meta=codec_meta, source_sha256=media.source_sha256,
                        info=media.info)


# ---- damaging copies ------------------------------------------------------------------------------------------
@dataclass
class RawSample:
    key: str
    tokens: np.ndarray
    text: np.ndarray
    meta: dict


def read_raw(tar_path: Path) -> tuple[dict, list[RawSample]]:
    """Header and samples of a tar, parsed without any validation."""
    with tarfile.open(tar_path, "r") as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    assert members[0][0] == HEADER_MEMBER
    header = json.loads(members[0][1])
    samples = []
    for i in range(1, len(members), 3):
        (tn, tb), (_, xb), (_, mb) = members[i: i + 3]
        samples.append(RawSample(key=tn.split(".")[0], tokens=np.load(io.BytesIO(tb)), text=np.load(io.BytesIO(xb)),
                                 meta=json.loads(mb)))
    return header, samples


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def write_raw(tar_path: Path, header: dict, samples: list[RawSample]) -> None:
    """Write a tar in the shard layout (same member attributes as the writer), checking nothing."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = len(data), 0o644, 0, 0, 0, "", ""
            tf.addfile(info, io.BytesIO(data))

        add(HEADER_MEMBER, canonical_json(header))
        for s in samples:
            add(f"{s.key}.tokens.npy", _npy(s.tokens))
            add(f"{s.key}.text.npy", _npy(s.text))
            add(f"{s.key}.json", canonical_json(s.meta))
    tar_path.write_bytes(buf.getvalue())


def reindex(out: Path, split: str, shard: str, samples: list[RawSample] | None = None, **override: Any) -> dict:
    """Make the index describe the tar as it now is (size, SHA-256 and, given samples, keys/ids/counts)."""
    tar = out / "shards" / split / f"{shard}.tar"
    idx_path = tar.with_suffix(".json")
    index = json.loads(idx_path.read_text())
    data = tar.read_bytes()
    index["tar_bytes"], index["tar_sha256"] = len(data), hashlib.sha256(data).hexdigest()
    if samples is not None:
        index.update(num_samples=len(samples), keys=[s.key for s in samples], ids=[s.meta["id"] for s in samples],
                     token_counts=[int(s.tokens.size) for s in samples],
                     text_token_counts=[int(s.text.size) for s in samples])
        if "offsets" in index:  # index version 2: where each sample's first member starts
            with tarfile.open(tar) as tf:
                starts = {m.name[: -len(".tokens.npy")]: m.offset for m in tf.getmembers()
                          if m.name.endswith(".tokens.npy")}
            index["offsets"] = [starts[s.key] for s in samples]
        if "modalities" in index:  # index version 3: each sample's meta modality
            modalities = [s.meta.get("modality") for s in samples]
            if all(isinstance(m, str) and m for m in modalities):
                index["modalities"] = modalities
            else:  # a meta without a valid modality: only an index of version 2 can describe that tar
                del index["modalities"]
                index["version"] = 2
    index.update(override)
    idx_path.write_bytes(canonical_json(index))
    return index


def rewrite_shard(out: Path, split: str, shard: str,
                  edit: Callable[[dict, list[RawSample]], tuple[dict, list[RawSample]] | None]) -> dict:
    """Apply `edit(header, samples)` to a shard, rewrite the tar and its index consistently."""
    tar = out / "shards" / split / f"{shard}.tar"
    header, samples = read_raw(tar)
    result = edit(header, samples)
    if result is not None:
        header, samples = result
    write_raw(tar, header, samples)
    return reindex(out, split, shard, samples)


def shard_with(out: Path, modality: str, split: str | None = None) -> tuple[str, str, RawSample]:
    """(split, shard, first sample) of the first shard holding a sample of `modality`."""
    for tar in sorted((out / "shards").glob("*/*.tar")):
        if split is not None and tar.parent.name != split:
            continue
        _, samples = read_raw(tar)
        for s in samples:
            if s.meta["modality"] == modality:
                return tar.parent.name, tar.stem, s
    raise LookupError(f"no {modality} sample in {out}")


def other_token_space(space: TokenSpace) -> TokenSpace:
    """The same ranges with other audio weights: what mixing random-init and pretrained tokens looks like."""
    d = space.to_dict()
    d["codecs"]["audio"]["weights"] = "random:1"
    d["codecs"]["audio"]["fingerprint"] = hashlib.sha256(b"other weights").hexdigest()
    return TokenSpace.from_dict(d)
