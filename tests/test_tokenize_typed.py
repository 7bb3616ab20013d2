"""Tokenize side: rows keep one shape (ManifestRow) from the driver to the read task and the
codec actor, the read task returns typed ReadResults, and an encoded chunk carries sharding.format.Samples."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import soundfile as sf

from ray_jobs.chunks import EncodedChunk, assemble
from ray_jobs.read import ReadFailure, ReadResult, read_rows
from sharding.format import Sample, build_sample
from sharding.manifest import ManifestRow
from uti.assets import synth_audio
from uti.config import LimitsConfig


def _rows(tmp_path: Path) -> list[ManifestRow]:
    good = tmp_path / "tone.wav"
    sf.write(good, synth_audio("tone", seconds=0.5, sample_rate=16000), 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    return [
        ManifestRow(id="d:tone", dataset="d", modality="audio", path=str(good), captions=("a tone",), split="train"),
        ManifestRow(id="d:bad", dataset="d", modality="audio", path=str(tmp_path / "bad.wav"), split="train"),
        ManifestRow(id="d:text", dataset="d", modality="text", path=None, captions=("only words",), split="train"),
        ManifestRow(id="d:pic", dataset="d", modality="image", path=str(tmp_path / "none.png"), split="train"),
    ]


def test_the_read_task_takes_manifest_rows_and_returns_typed_results(tmp_path):
    rows = _rows(tmp_path)
    # As Ray ships them: the rows and the limits pickled as they are, no dict round trip.
    shipped_rows, limits = pickle.loads(pickle.dumps((rows, LimitsConfig()), protocol=5))
    results = read_rows(shipped_rows, sample_rate=24000, channels=1, proc_size=16, limits=limits,
                        no_range={"image": "no image codec in this config"})
    assert all(isinstance(r, ReadResult) for r in results), results
    tone, bad, text, pic = results
    assert tone.ok and tone.data.dtype == np.float32 and tone.data.shape[0] == 1 and tone.source_sha256
    assert not bad.ok and isinstance(bad.failure, ReadFailure) and bad.failure.stage in ("read", "decode")
    assert text.ok and text.data is None and text.source_sha256 is None
    assert pic.failure == ReadFailure("tokenize", "no_image_range", "no image codec in this config")
    # A result travels through the object store: it pickles, media included.
    again = pickle.loads(pickle.dumps(tone, protocol=5))
    assert again.id == tone.id and np.array_equal(again.data, tone.data) and again.info == tone.info


def test_an_encoded_chunk_carries_samples_and_assembles_in_plan_order():
    rows = [ManifestRow(id=f"d:{k}", dataset="d", modality="text", path=None, captions=("x",), split="train")
            for k in "abc"]
    samples = [build_sample(r, split="train", token_space_id="0" * 64, tokens=np.zeros(0, np.uint32),
                            text=np.array([7], np.uint32), caption_token_lengths=[1]) for r in rows]
    error = {"id": "d:b", "stage": "read", "reason": "unreadable", "detail": "gone"}
    first = EncodedChunk(ids=["d:a", "d:b"], samples=[samples[0]], errors=[error])
    second = pickle.loads(pickle.dumps(EncodedChunk(ids=["d:c"], samples=[samples[2]], errors=[]), protocol=5))
    got, errors = assemble([r.id for r in rows], [first, second], where="train/shard-000000")
    assert all(isinstance(s, Sample) for s in got) and [s.id for s in got] == ["d:a", "d:c"]
    assert errors == [error]
