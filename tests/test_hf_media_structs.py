"""`uti manifest --dataset hf` on media stored as a plain {bytes, path} struct (never cast to Audio/Image):
the column is found and taken, or named with the flag that takes it; never captions alone in silence."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from sharding.manifest import build_manifest
from sharding.media import AudioSpec, load_audio, load_image, media_kind
from uti.config import LimitsConfig


def _flac(seconds: float = 0.2) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(np.arange(int(16000 * seconds)) / 5)).astype(np.float32), 16000, format="FLAC")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 40, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _save(ds, tmp_path, how: str):
    """The dataset written as `how` ("saved": save_to_disk, "parquet": to_parquet); the folder to read."""
    root = tmp_path / how
    if how == "saved":
        ds.save_to_disk(str(root))
    else:
        ds.to_parquet(str(root / "data" / "train-00000.parquet"))
    return root


@pytest.mark.parametrize("how", ["saved", "parquet"])
@pytest.mark.parametrize("label", ["clip.flac", None], ids=["by-extension", "by-magic"])
def test_a_plain_audio_struct_column_is_taken_as_audio(tmp_path, how, label):
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "caption": ["rain", "wind"],
                                     "audio": [{"bytes": _flac(), "path": label}, {"bytes": _flac(0.3), "path": label}]})
    assert type(ds.features["audio"]).__name__ != "Audio"  # a plain struct, not the Audio feature
    root = _save(ds, tmp_path, how)
    build = build_manifest("hf", root, split_fractions={"train": 1.0})
    assert [(r.id, r.modality) for r in build.rows] == [("hf:a", "audio"), ("hf:b", "audio")]
    assert build.rows[1].duration == pytest.approx(0.3) and build.rows[1].extra["column"] == "audio"
    media = load_audio(build.rows[0], spec=AudioSpec(sample_rate=24000, channels=1), limits=LimitsConfig())
    assert media.data.shape[-1] == round(0.2 * 24000)  # the bytes the manifest points at are the clip


@pytest.mark.parametrize("how", ["saved", "parquet"])
def test_a_plain_image_struct_column_is_taken_as_images(tmp_path, how):
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a red box"], "picture": [{"bytes": _png(), "path": None}]})
    build = build_manifest("hf", _save(ds, tmp_path, how))
    (row,) = build.rows
    assert row.modality == "image" and row.captions == ("a red box",) and row.extra["column"] == "picture"
    assert load_image(row, proc_size=8, limits=LimitsConfig()).info["source_size"] == [12, 10]


def test_an_audio_and_an_image_struct_are_named_with_the_flags(tmp_path):
    import datasets

    from sharding.manifest import ManifestError

    ds = datasets.Dataset.from_dict({"caption": ["x"], "audio": [{"bytes": _flac(), "path": "a.flac"}],
                                     "image": [{"bytes": _png(), "path": "a.png"}]})
    root = _save(ds, tmp_path, "saved")
    with pytest.raises(ManifestError, match=r"several media columns \(audio, image\).*--hf-audio-column"):
        build_manifest("hf", root)
    assert [r.modality for r in build_manifest("hf", root, image_column="image").rows] == ["image"]


def test_a_struct_of_unknown_bytes_is_named_in_a_warning(tmp_path, caplog):
    import datasets

    ds = datasets.Dataset.from_dict({"caption": ["x"], "blob": [{"bytes": b"\x00\x01 what is this", "path": None}]})
    with caplog.at_level(logging.WARNING, logger="sharding.datasets.hf"):
        build = build_manifest("hf", _save(ds, tmp_path, "parquet"))
    assert [r.modality for r in build.rows] == ["text"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "'blob'" in warning and "--hf-audio-column" in warning and "--hf-image-column" in warning


def test_media_kind_from_names_and_bytes():
    assert media_kind("x/y.FLAC", None) == "audio" and media_kind("p.jpeg", None) == "image"
    assert media_kind(None, _flac()) == "audio" and media_kind("", _png()) == "image"
    wav = io.BytesIO()
    sf.write(wav, np.zeros(10, np.float32), 8000, format="WAV")
    assert media_kind(None, wav.getvalue()) == "audio"
    webp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(webp, format="WEBP")
    assert media_kind(None, webp.getvalue()) == "image"  # RIFF too, but not WAVE
    assert media_kind("notes.txt", b"plain text") is None and media_kind(None, None) is None
