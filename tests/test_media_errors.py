"""Per-sample media errors read as plain words: an empty file says so, and no message carries an object's
repr (a memory address that means nothing to a user and differs from run to run)."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from sharding.manifest import ManifestRow
from sharding.media import AudioSpec, load_audio, load_image
from uti.config import LimitsConfig
from uti.errors import MediaError, without_object_reprs

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}|object at")
SPEC = AudioSpec(sample_rate=24000, channels=1)


def _row(path, modality: str, **extra) -> ManifestRow:
    return ManifestRow(id=f"t:{modality}", dataset="t", modality=modality, path=str(path), split="train",
                       extra=extra)


def _load(row: ManifestRow) -> MediaError:
    with pytest.raises(MediaError) as info:
        if row.modality == "image":
            load_image(row, proc_size=16, limits=LimitsConfig())
        else:
            load_audio(row, spec=SPEC, limits=LimitsConfig())
    return info.value


@pytest.mark.parametrize("name, modality", [("empty.png", "image"), ("empty.jpg", "image"),
                                            ("empty.wav", "audio"), ("empty.flac", "audio")])
def test_a_zero_byte_file_is_an_empty_file(tmp_path, name, modality):
    path = tmp_path / name
    path.write_bytes(b"")
    err = _load(_row(path, modality))
    assert err.reason == "empty_file" and err.stage == "read"
    assert "empty file (0 bytes)" in str(err) and str(path) in str(err)
    assert not ADDRESS.search(str(err)), str(err)


def test_an_undecodable_image_names_no_object(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"not an image at all" * 10)
    err = _load(_row(path, "image"))
    assert err.reason == "undecodable_image"
    assert "cannot identify image file" in str(err) and not ADDRESS.search(str(err)), str(err)


def _parquet(tmp_path, payload: bytes, label: str | None = "clip.wav") -> ManifestRow:
    """A row whose audio bytes sit inside a parquet file: decoded from memory, never from a path."""
    pq.write_table(pa.table({"audio": [{"bytes": payload, "path": label}]}), tmp_path / "data.parquet")
    return _row(tmp_path, "audio", hf_source=str(tmp_path), hf_index=0, column="audio", hf_file="data.parquet")


def test_undecodable_audio_bytes_name_no_object(tmp_path):
    err = _load(_parquet(tmp_path, b"garbage, not a sound file" * 8))
    assert err.reason == "unreadable"
    assert "Format not recognised" in str(err) and not ADDRESS.search(str(err)), str(err)


def test_empty_audio_bytes_in_a_dataset_are_an_empty_file(tmp_path):
    err = _load(_parquet(tmp_path, b"", label=None))
    assert err.reason == "empty_file" and "0 bytes" in str(err), str(err)


def test_good_media_still_loads(tmp_path):
    """The empty-file check refuses nothing else."""
    wav, png = tmp_path / "a.wav", tmp_path / "a.png"
    sf.write(wav, np.zeros(2400, np.float32), 24000)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(png)
    assert load_audio(_row(wav, "audio"), spec=SPEC, limits=LimitsConfig()).data.shape[-1] == 2400
    assert load_image(_row(png, "image"), proc_size=16, limits=LimitsConfig()).data.shape == (16, 16, 3)


def test_library_errors_lose_their_object_reprs():
    """The filter every per-sample error row goes through (sharding.media, the codec actor)."""
    try:
        sf.info(io.BytesIO(b"nope"))
    except Exception as exc:  # noqa: BLE001
        raw = str(exc)
    assert ADDRESS.search(raw), "libsndfile no longer names the object: this test checks nothing"
    clean = without_object_reprs(raw, name="the file")
    assert clean == "Error opening the file: Format not recognised." and not ADDRESS.search(clean)
    assert without_object_reprs("x <a.B object at 0xdeadbeef> and <C object at 0x1>") == "x the data and the data"
