"""Hostile inputs to manifest building and tokenization.

One dataset root holds every hostile media file next to a few good ones; ONE `jsonl` manifest build
and ONE tokenize run cover them all: each bad row must end in errors.jsonl with its own reason (or be
refused while the manifest is built), the good rows (CMYK, 16-bit and palette images included) must be
samples, nothing may crash or hang, and nothing may be written outside OUT. Separate, fast tests
cover the dataset layouts (CSV with BOM/CRLF/missing column, JSON that is not a list, duplicate IDs).
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ray_jobs.job import run_tokenize
from sharding.manifest import ManifestError, build_manifest, read_manifest, write_manifest
from sharding.media import AudioSpec, load_audio
from sharding.reader import ShardReader
from uti.config import LimitsConfig
from uti.errors import MediaError, UTIError
from uti.token_space import TokenSpace

from verify_helpers import verify_quick

from .conftest import account, snapshot

pytestmark = [pytest.mark.reliability]
REPORT_GROUP = "hostile inputs"
THREE_HOURS = 3 * 3600


# ---- media makers ----------------------------------------------------------------------------------------------
def _tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def _encoded(fmt: str, subtype: str, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, _tone(seconds), 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


def _wav_header(*, rate: int, channels: int, bits: int, data_bytes: int) -> bytes:
    """A PCM WAV header written by hand (any rate, any declared length)."""
    align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * align, align, bits)
            + b"data" + struct.pack("<I", data_bytes))


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _garbage_after(raw: bytes, keep: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return raw[:keep] + rng.integers(0, 256, len(raw) - keep, dtype=np.uint8).tobytes()


def _image_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _sparse_three_hour_wav(path: Path) -> None:
    """48 kHz stereo 16-bit, 3 h: a 2 GB file whose samples are a hole (no disk used, nothing to read)."""
    data_bytes = THREE_HOURS * 48000 * 2 * 2
    header = _wav_header(rate=48000, channels=2, bits=16, data_bytes=data_bytes)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.truncate(len(header) + data_bytes)


# name -> (file name, bytes or a writer, expected outcome): "ok" = a sample, else the errors.jsonl reason
def _media() -> dict[str, tuple[str, object, str]]:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    good_wav = _encoded("WAV", "PCM_16")
    good_flac = _encoded("FLAC", "PCM_16")
    good_ogg = _encoded("OGG", "VORBIS")
    wav_fmt_mangled = bytearray(good_wav)
    wav_fmt_mangled[20:36] = b"\xff" * 16
    jpeg = _image_bytes(Image.fromarray(rgb), "JPEG")

    def wav(data: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
        buf = io.BytesIO()
        sf.write(buf, data, rate, format="WAV", subtype=subtype)
        return buf.getvalue()

    nan = _tone(0.3)
    nan[100] = np.nan
    inf = _tone(0.3)
    inf[7] = np.inf
    return {
        "good_wav": ("good.wav", good_wav, "ok"),
        "good_flac": ("good.flac", good_flac, "ok"),
        "good_ogg": ("good.ogg", good_ogg, "ok"),
        "cmyk_jpeg": ("cmyk.jpg", _image_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG"), "ok"),
        "png_16bit": ("i16.png", _image_bytes(Image.fromarray(
            (rgb[..., 0].astype(np.uint16) * 257)), "PNG"), "ok"),
        "png_palette": ("palette.png", _image_bytes(Image.fromarray(rgb).convert("P"), "PNG"), "ok"),
        "truncated_wav": ("trunc.wav", good_wav[: len(good_wav) // 2], "unreadable"),
        "corrupt_wav": ("corrupt.wav", bytes(wav_fmt_mangled), "unreadable"),
        "truncated_flac": ("trunc.flac", good_flac[: len(good_flac) // 2], "unreadable"),
        "corrupt_flac": ("corrupt.flac", _garbage_after(good_flac, 64, 1), "unreadable"),
        "truncated_ogg": ("trunc.ogg", good_ogg[: len(good_ogg) // 2], "unreadable"),
        "corrupt_ogg": ("corrupt.ogg", _garbage_after(good_ogg, 64, 2), "unreadable"),
        "zero_length": ("zero.wav", wav(np.zeros(0, np.float32)), "zero_length"),
        "one_sample": ("one.wav", wav(np.zeros(1, np.float32)), "too_short"),
        "nan_samples": ("nan.wav", wav(nan, subtype="FLOAT"), "nan_or_inf"),
        "inf_samples": ("inf.wav", wav(inf, subtype="FLOAT"), "nan_or_inf"),
        "eight_channels": ("ch8.wav", wav(_tone(0.2, channels=8)), "channels"),
        "rate_1hz": ("rate1.wav", _wav_header(rate=1, channels=1, bits=16, data_bytes=200) + bytes(200),
                     "sample_rate"),
        # above limits.max_sample_rate (768 kHz); 352.8/384 kHz masters are accepted
        "rate_1536khz": ("rate1536k.wav", wav(_tone(0.01, rate=1536000), rate=1536000), "sample_rate"),
        "three_hours_sparse": ("long.wav", _sparse_three_hour_wav, "too_long"),
        "three_hours_claimed": ("claims-long.wav", _wav_header(rate=48000, channels=2, bits=16,
                                                              data_bytes=THREE_HOURS * 48000 * 4) + bytes(4096),
                                "unreadable"),
        "png_bomb": ("bomb.png", _png(100_000, 100_000, zlib.compress(b"\0" * 4096, 9)), "decompression_bomb"),
        "truncated_jpeg": ("trunc.jpg", jpeg[: len(jpeg) // 2], "undecodable_image"),
        "text_named_wav": ("notes.wav", b"this is a text file, not audio\n" * 20, "unreadable"),
    }


FIXED = ("truncated_wav", "three_hours_claimed")
MODALITY = {".wav": "audio", ".flac": "audio", ".ogg": "audio", ".jpg": "image", ".png": "image"}


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    (root / "media").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.wav"
    secret.write_bytes(_encoded("WAV", "PCM_16", 0.3))
    media = _media()
    lines = []
    for name, (fname, content, _) in media.items():
        path = root / "media" / fname
        content(path) if callable(content) else path.write_bytes(content)
        lines.append({"id": name, "modality": MODALITY[path.suffix], "path": f"media/{fname}", "split": "train",
                      "caption": f"the {name.replace('_', ' ')}"})
    lines.append({"id": "text_only", "modality": "text", "caption": "words only", "split": "train"})
    os.symlink(secret, root / "media" / "link.wav")
    os.symlink(outside, root / "linkdir")
    escapes = {  # refused while the manifest is built: rows never reach tokenization
        "escape_dotdot": ("../outside/secret.wav", "outside the dataset root"),
        "escape_absolute": (str(secret), "is absolute"),
        "escape_symlink": ("media/link.wav", "outside the dataset root"),
        "escape_dir_symlink": ("linkdir/secret.wav", "outside the dataset root"),
        "nul_in_path": ("media/good.wav\u0000.txt", "NUL byte"),
    }
    for name, (rel, _) in escapes.items():
        lines.append({"id": name, "modality": "audio", "path": rel, "split": "train", "caption": name})
    lines.append({"id": "missing_file", "modality": "audio", "path": "media/nope.wav", "split": "train",
                  "caption": "gone"})
    lines.append({"id": "good_wav", "modality": "audio", "path": "media/good.flac", "split": "train",
                  "caption": "same id again"})  # duplicate ID: the second is refused, naming it
    (root / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"base": base, "root": root, "secret": secret, "media": media, "escapes": escapes}


def test_hostile_media_in_one_manifest_and_one_tokenize_run(ray_session, hostile_root, record):
    """Hostile media rows: each ends in errors.jsonl with its reason or is refused at manifest build."""
    base, root, media = hostile_root["base"], hostile_root["root"], hostile_root["media"]
    secret_before = hostile_root["secret"].read_bytes()
    out, report_dir = base / "OUT", base / "verify-report"
    before = snapshot(base)

    build = build_manifest("jsonl", root)
    assert snapshot(base) == before, "building a manifest wrote files"
    rejected = {r.item: r.reason for r in build.rejected}
    for name, (_, why) in hostile_root["escapes"].items():
        assert why in rejected.pop(f"jsonl:{name}"), name
    dup = rejected.pop("jsonl:good_wav")
    assert "duplicate canonical ID" in dup and rejected == {}, rejected
    assert [m.item for m in build.missing] == ["jsonl:missing_file"]
    expected = {f"jsonl:{name}": want for name, (_, _, want) in media.items()} | {"jsonl:text_only": "ok"}
    assert sorted(r.id for r in build.rows) == sorted(expected)
    manifest = base / "manifest.jsonl"
    write_manifest(manifest, build.rows)
    before = snapshot(base)

    from ray_jobs.config import TokenizeConfig

    # One codec actor: a second would only add a process importing torch and loading codecs (seconds on two
    # cores) for these few rows; what is checked is per row, whichever actor encodes it.
    cfg = TokenizeConfig(manifests=(str(manifest),), out=str(out), shard_samples=8, num_actors=1, progress=False)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(job=run_tokenize(cfg)), daemon=True)
    t0 = time.time()
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "tokenization hung on hostile input"
    assert "job" in result, "tokenization crashed on hostile input (see the thread's traceback above)"
    seconds = time.time() - t0

    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    got = {i: errors[i]["reason"] if i in errors else "ok" for i in expected}
    space = TokenSpace.load(out)
    samples = {s.meta["id"]: s for s in ShardReader(str(out), expected_token_space=space)}
    assert set(samples) == {i for i, want in expected.items() if want == "ok"}
    assert got == expected, {i: (got[i], expected[i]) for i in expected if got[i] != expected[i]}
    for e in errors.values():  # clear: the row, its file and what is wrong, in one line
        assert e["id"] in e["detail"] and e["path"] in e["detail"] and e["stage"] in ("read", "validate")
    assert "truncated WAV" in errors["jsonl:truncated_wav"]["detail"]
    assert "truncated WAV" in errors["jsonl:three_hours_claimed"]["detail"]
    assert "10800.0 s exceeds" in errors["jsonl:three_hours_sparse"]["detail"]
    real_root = os.path.realpath(root)
    for s in samples.values():
        if s.meta["modality"] != "text":
            assert os.path.commonpath([real_root, os.path.realpath(s.meta["source"])]) == real_root
    acc = account(out, list(expected))
    assert (acc.lost, acc.duplicates, acc.unknown) == (0, 0, 0), acc
    after = snapshot(base, skip=(out,))
    assert after == {k: v for k, v in before.items()}, "files were written or changed outside OUT"
    assert hostile_root["secret"].read_bytes() == secret_before
    verified = verify_quick(out, report_dir=str(report_dir))
    assert verified.ok, verified.report["failed_hard"]

    for name, (fname, _, want) in media.items():
        label = name.replace("_", " ")
        fixed = " (was silently tokenized from the partial file before this suite's fix)" if name in FIXED else ""
        record(f"{label} ({fname})", group=REPORT_GROUP, outcome=("tokenized (must succeed)" if want == "ok" else
               f"refused per sample, errors.jsonl reason `{want}`{fixed}"), lost=0, duplicates=0)
    for name, (rel, why) in hostile_root["escapes"].items():
        shown = "/.../outside/secret.wav" if os.path.isabs(rel) else rel
        record(f"{name.replace('_', ' ')} in a JSONL dataset ({shown!r})", group=REPORT_GROUP,
               outcome=f"refused at manifest build: {why}", lost=0, duplicates=0)
    record("duplicate ID in a JSONL dataset", group=REPORT_GROUP, outcome="second row refused at manifest build, "
           "naming the ID and the split of the kept one", lost=0, duplicates=0)
    record(f"all {len(expected)} rows in one run (nothing written outside OUT)", group=REPORT_GROUP,
           outcome=f"{acc.samples} samples + {acc.errors} errors.jsonl rows in {seconds:.0f} s; verify ok",
           lost=acc.lost, duplicates=acc.duplicates)


def test_three_hour_file_is_refused_from_the_header_alone(hostile_root, monkeypatch, record):
    """A 3-hour WAV is refused by limits.max_audio_seconds without reading its samples."""
    import sharding.media as media_mod
    from sharding.manifest import ManifestRow

    path = hostile_root["root"] / "media" / "long.wav"
    assert path.stat().st_size > 2_000_000_000  # 2 GB declared and present (as a hole)

    def never(*a, **k):
        raise AssertionError("the 3-hour file was read whole")

    monkeypatch.setattr(media_mod, "read_source_bytes", never)
    monkeypatch.setattr(sf, "read", never)
    row = ManifestRow(id="x:long", dataset="x", modality="audio", path=str(path), split="train")
    t0 = time.perf_counter()
    with pytest.raises(MediaError) as exc:
        load_audio(row, spec=AudioSpec(sample_rate=24000, channels=1), limits=LimitsConfig(max_audio_seconds=600))
    elapsed = time.perf_counter() - t0
    assert exc.value.reason == "too_long" and "max_audio_seconds" in str(exc.value)
    assert elapsed < 0.5, elapsed
    # and the limit is configurable: an hour-long limit still refuses it, a 4-hour one would let it through
    with pytest.raises(MediaError, match="exceeds limits.max_audio_seconds = 3600"):
        load_audio(row, spec=AudioSpec(sample_rate=24000, channels=1), limits=LimitsConfig(max_audio_seconds=3600))
    with pytest.raises(AssertionError, match="read whole"):
        load_audio(row, spec=AudioSpec(sample_rate=24000, channels=1), limits=LimitsConfig(max_audio_seconds=4 * 3600))
    record("3-hour WAV vs max duration (2 GB sparse file)", group=REPORT_GROUP,
           outcome=f"`too_long` from the header in {elapsed * 1000:.1f} ms; samples never read", lost=0, duplicates=0)


# ---- dataset layouts -----------------------------------------------------------------------------------------
def _clotho_root(tmp_path: Path, header: list[str], rows: list[list[str]]) -> Path:
    root = tmp_path / "clotho"
    (root / "development").mkdir(parents=True)
    sf.write(root / "development" / "a.wav", _tone(0.2), 16000)
    sf.write(root / "development" / "b.wav", _tone(0.2), 16000)
    text = "\r\n".join(",".join(r) for r in [header] + rows) + "\r\n"
    (root / "clotho_captions_development.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return root


CAPS = [f"caption_{i}" for i in range(1, 6)]


def test_csv_with_bom_crlf_and_a_short_row(tmp_path, record):
    """A Clotho CSV with a UTF-8 BOM and CRLF endings parses; a row with a missing cell is rejected."""
    root = _clotho_root(tmp_path, ["file_name", *CAPS], [["a.wav", "one", "two", "three", "four", "five"],
                                                          ["b.wav", "only", "four", "cells"]])
    build = build_manifest("clotho", root)
    assert [r.id for r in build.rows] == ["clotho:a.wav"]
    assert build.rows[0].captions == ("one", "two", "three", "four", "five")  # no "\r" left on the last one
    [bad] = build.rejected
    assert bad.item == "clotho_captions_development.csv line 3" and "has 4 fields but the header has 6" in bad.reason
    record("CSV with BOM + CRLF (+ a row with a missing cell)", group="hostile manifests",
           outcome="parsed; the short row rejected naming file and line", lost=0, duplicates=0)


def test_csv_missing_column_is_refused(tmp_path, record):
    """A Clotho CSV (BOM, CRLF) without its caption_5 column is refused before any row is made."""
    root = _clotho_root(tmp_path, ["file_name", *CAPS[:4]], [["a.wav", "1", "2", "3", "4"]])
    with pytest.raises(ManifestError, match=r"missing required column 'caption_5'") as exc:
        build_manifest("clotho", root)
    assert "clotho_captions_development.csv" in str(exc.value)
    record("CSV with BOM + CRLF and a missing column", group="hostile manifests",
           outcome="refused before work: names the file and the column", lost=None, duplicates=None)


@pytest.mark.parametrize("content, match", [
    (b'{"id": "1", "image": "a.png"}', "holds a JSON dict, expected a list"),
    (b'"just a string"', "holds a JSON str, expected a list"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
    (b'[{"id": 1' + b"9" * 5000 + b'}]', "not valid UTF-8 JSON"),
], ids=["object", "string", "nested-100k", "5000-digit-int"])
def test_llava_json_that_is_not_a_list_is_refused(tmp_path, content, match, record, request):
    """LLaVA JSON that is not a list (or is absurd JSON) is refused with a clear ManifestError."""
    (tmp_path / "blip_laion_cc_sbu_558k.json").write_bytes(content)
    with pytest.raises(ManifestError, match=match) as exc:
        build_manifest("llava", tmp_path)
    assert "blip_laion_cc_sbu_558k.json" in str(exc.value)
    record(f"LLaVA JSON: {request.node.callspec.id}", group="hostile manifests",
           outcome="refused before work with a ManifestError naming the file", lost=None, duplicates=None)


def test_jsonl_dataset_line_with_absurd_json_is_refused(tmp_path, record):
    """A JSONL dataset line with a 5000-digit number or 100k-deep nesting: a ManifestError naming the line."""
    for i, line in enumerate([b'{"id": 1' + b"9" * 5000 + b'}', b"[" * 100_000 + b"]" * 100_000]):
        (tmp_path / "d.jsonl").write_bytes(b'{"id": "t", "modality": "text", "caption": "ok"}\n' + line + b"\n")
        with pytest.raises(ManifestError, match=r"d\.jsonl line 2: not valid UTF-8 JSON"):
            build_manifest("jsonl", tmp_path)
    record("JSONL dataset line with a 5000-digit int / 100k-deep nesting", group="hostile manifests",
           outcome="refused with a ManifestError naming file and line", lost=None, duplicates=None)


def test_duplicate_ids_in_manifests_are_refused_before_work(ray_session, tmp_path, record):
    """Duplicate canonical IDs in one manifest, or across two, are refused naming every one, before any work."""
    from ray_jobs.config import TokenizeConfig
    from sharding.manifest import ManifestRow

    rows = [ManifestRow(id=f"d:{k}", dataset="d", modality="text", path=None, captions=(k,), split="train")
            for k in ("a", "b", "c")]
    one = tmp_path / "one.jsonl"
    write_manifest(one, rows)
    dup = tmp_path / "dup.jsonl"
    dup.write_bytes(one.read_bytes() + one.read_bytes().splitlines(keepends=True)[1])  # d:b again
    with pytest.raises(ManifestError, match=r"1 duplicate canonical ID\(s\): 'd:b' \(line 2 and line 4\)"):
        read_manifest(dup)
    other = tmp_path / "other.jsonl"
    write_manifest(other, rows[:1] + [ManifestRow(id="d:z", dataset="d", modality="text", path=None,
                                                  captions=("z",), split="train")])
    out = tmp_path / "OUT"
    t0 = time.perf_counter()
    for manifests, match in (((dup,), "line 2 and line 4"), ((one, other), f"'d:a' \\({one} and {other}\\)")):
        with pytest.raises(UTIError, match=match):
            run_tokenize(TokenizeConfig(manifests=tuple(map(str, manifests)), out=str(out), progress=False))
    assert time.perf_counter() - t0 < 5 and not out.exists()  # refused before codecs, Ray or OUT
    record("duplicate IDs in a manifest / across two manifests", group="hostile manifests",
           outcome="refused before work, naming every ID and both lines/files; OUT not created",
           lost=None, duplicates=None)


def test_manifest_line_with_a_huge_integer_is_a_manifest_error(tmp_path, record):
    """A manifest line with a 5000-digit integer is refused with a ManifestError naming the line."""
    record("manifest JSONL line with a 5000-digit integer", group="hostile manifests", outcome="ManifestError naming the line",
           lost=None, duplicates=None)
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "d:a", "bytes": 1' + b"9" * 5000 + b"}\n")
    with pytest.raises(ManifestError, match="line 1"):
        read_manifest(path)
