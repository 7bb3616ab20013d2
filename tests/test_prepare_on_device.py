"""Feeding the GPU, on a CPU: with `--prepare-on device` the read tasks only decode and check,
and the codec actor resamples, mixes and resizes on its own device (uti.preprocess.prepare_media).

On a CPU the device's audio preparation is the reader's bit for bit, so audio tokens equal; images are
resized by torch, not PIL, so their tokens are valid but their own (the shard's policy records where).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from cli_helpers import uti_in_process
from ray_jobs.config import PREPARE_ON, TokenizeConfig
from ray_jobs.read import ReadResult, read_rows
from ray_jobs.resources import Request, prepare_on
from sharding.manifest import ManifestRow
from sharding.media import AudioSpec, LoadedMedia, load_media, prepare_loaded
from sharding.reader import ShardReader
from uti.assets import synth_audio, synth_image
from uti.codecs import batching
from uti.config import LimitsConfig
from uti.errors import ConfigError, MediaError
from uti.preprocess import prepare_image, prepare_media, prepare_waveform, to_rgb, to_rgb_array
from uti.token_space import TokenSpace


def _row(path, modality: str, id_: str = "d:x") -> ManifestRow:
    return ManifestRow(id=id_, dataset="d", modality=modality, path=str(path), split="train")


def _wav(path, channels: int, rate: int, seconds: float = 0.3, seed: int = 0, subtype: str | None = None):
    rng = np.random.default_rng(seed)
    mono = synth_audio("speechlike", seconds=seconds, sample_rate=rate, seed=seed)
    data = np.stack([mono * (0.4 + 0.1 * c) + 0.01 * rng.standard_normal(mono.size) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate, subtype=subtype or "FLOAT")
    return path


# ---- audio: the device's preparation is the reader's, bit for bit, on a CPU ----------------------------------
@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("source_channels", [1, 2, 6])
def test_device_audio_preparation_equals_the_readers_on_cpu(tmp_path, rate, source_channels):
    """Through the real loader both ways, and through the object store (a pickled ReadResult whose array
    may arrive in another memory layout: a 6-channel mean sums in another order on a contiguous copy)."""
    limits = LimitsConfig(max_channels=8)
    row = _row(_wav(tmp_path / "a.wav", source_channels, rate, seed=source_channels), "audio")
    for channels in (1, 2):
        spec = AudioSpec(sample_rate=24000, channels=channels)
        reader = load_media(row, limits=limits, spec=spec)
        raw = load_media(row, limits=limits, spec=spec, prepare=False)
        shipped = pickle.loads(pickle.dumps(raw, protocol=5))
        for data in (shipped.data, np.ascontiguousarray(shipped.data)):
            media = LoadedMedia(data=data, source_sha256=raw.source_sha256, info=raw.info, prepared=False)
            device = prepare_loaded(row, media, device=torch.device("cpu"), spec=spec)
            assert device.data.dtype == reader.data.dtype == torch.float32
            assert device.data.shape == reader.data.shape and torch.equal(device.data, reader.data)
            assert device.info == reader.info and device.source_sha256 == reader.source_sha256
        direct = prepare_media("audio", raw.data, rate, target_rate=24000, channels=channels, device="cpu")
        assert torch.equal(direct, prepare_waveform(raw.data, rate, target_rate=24000, channels=channels))


# ---- raw loading: every per-sample check stays ----------------------------------------------------------------
def test_raw_loading_keeps_every_check_and_returns_the_source_rate(tmp_path):
    limits = LimitsConfig()
    good = _wav(tmp_path / "good.wav", 2, 22050)
    raw = load_media(_row(good, "audio"), limits=limits, prepare=False)  # no codec spec needed
    decoded, rate = sf.read(good, dtype="float32", always_2d=True)
    assert raw.prepared is False and isinstance(raw.data, np.ndarray) and raw.data.dtype == np.float32
    assert raw.data.shape == (2, decoded.shape[0]) and np.array_equal(raw.data, decoded.T)
    assert raw.info["source_sample_rate"] == rate == 22050 and raw.info["source_channels"] == 2
    assert raw.source_sha256 == hashlib.sha256(good.read_bytes()).hexdigest()

    nan = synth_audio("tone", seconds=0.2, sample_rate=16000)
    nan[7] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    whole = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "one.wav", np.zeros(1, np.float32), 16000)
    refused = {"nan.wav": "nan_or_inf", "cut.wav": "unreadable", "empty.wav": "empty_file", "one.wav": "too_short"}
    for name, reason in refused.items():
        with pytest.raises(MediaError) as exc:
            load_media(_row(tmp_path / name, "audio"), limits=limits, prepare=False)
        assert exc.value.reason == reason, (name, exc.value)
    with pytest.raises(MediaError) as exc:
        load_media(_row(good, "audio"), limits=LimitsConfig(max_audio_seconds=0.1), prepare=False)
    assert exc.value.reason == "too_long"


def test_raw_images_are_rgb_at_their_source_size_and_still_checked(tmp_path):
    rgba = np.dstack([synth_image(size=40, seed=3)[:30], np.full((30, 40), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    raw = load_media(_row(tmp_path / "a.png", "image"), limits=LimitsConfig(), prepare=False)
    with Image.open(tmp_path / "a.png") as im:
        want = np.asarray(to_rgb(im))  # alpha composited on white, as the reader does before resizing
    assert raw.prepared is False and raw.data.dtype == np.uint8 and raw.data.shape == (30, 40, 3)
    assert np.array_equal(raw.data, want) and raw.info["source_size"] == [40, 30]
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError) as exc:
        load_media(_row(tmp_path / "cut.png", "image"), limits=LimitsConfig(), prepare=False)
    assert exc.value.reason == "undecodable_image"
    with pytest.raises(MediaError) as exc:
        load_media(_row(tmp_path / "a.png", "image"), limits=LimitsConfig(max_image_pixels=100), prepare=False)
    assert exc.value.reason in ("too_large", "decompression_bomb")


# ---- images: torch's resize on the device -----------------------------------------------------------------
def test_the_device_image_resize_is_deterministic_and_has_proc_size():
    for h, w in ((96, 96), (50, 131), (300, 70)):
        raw = synth_image(size=max(h, w), seed=h)[:h, :w]
        once, twice = prepare_image(raw, 64), prepare_image(raw.copy(), 64)
        assert once.dtype == torch.uint8 and tuple(once.shape) == (64, 64, 3)
        assert once.numpy().tobytes() == twice.numpy().tobytes()
        # Close to PIL's pixels, not equal to them (that is why the policy records prepare_on).
        pil = to_rgb_array(Image.fromarray(raw), 64).astype(int)
        assert np.abs(once.numpy().astype(int) - pil).mean() < 2.0
    flat = np.full((70, 90, 3), (10, 200, 255), np.uint8)  # bicubic overshoot is rounded and clamped away
    assert (prepare_image(flat, 32).numpy() == (10, 200, 255)).all()
    shifted = synth_image(size=74, seed=1)[:64]  # short side already 64: only the centred crop
    assert np.array_equal(prepare_image(shifted, 64).numpy(), shifted[:, 5:69])


# ---- --prepare-on: the flag, auto, and the read args --------------------------------------------------------
def test_prepare_on_auto_is_the_device_for_gpu_actors_and_the_reader_on_cpu(tmp_path):
    assert PREPARE_ON[1:] == batching.PREPARE_ON  # the config's spelling is the policy's
    cpu = Request(num_actors=1, cpus_per_actor=1, gpus_per_actor=0, read_cpus=0)
    gpu = Request(num_actors=1, cpus_per_actor=1, gpus_per_actor=1, read_cpus=0.5)
    auto = TokenizeConfig(manifests=("m",), out="o")
    assert prepare_on(auto, cpu) == "reader" and prepare_on(auto, gpu) == "device"
    for value in ("reader", "device"):
        assert prepare_on(TokenizeConfig(manifests=("m",), out="o", prepare_on=value), gpu) == value
    with pytest.raises(ConfigError, match="--prepare-on"):
        TokenizeConfig(manifests=("m",), out="o", prepare_on="gpu")
    row = _row(_wav(tmp_path / "a.wav", 1, 16000), "audio")
    prepared, raw = (read_rows([row], sample_rate=24000, channels=1, proc_size=64, limits=LimitsConfig(), prepare=p)[0]
                     for p in (True, False))
    assert prepared.prepared and prepared.data.shape[1] == -(-raw.data.shape[1] * 3 // 2)  # 16 -> 24 kHz
    assert not raw.prepared and raw.data.shape[1] == raw.info["source_frames"] and raw.info == prepared.info


# ---- the whole job --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def device_run(ray_session, reference_run, tokenize_manifests, tmp_path_factory):
    """The session's reference (prepare_on auto: the reader, on CPU) and the same inputs with --prepare-on device,
    fed by read tasks (raw media through the object store) to one actor."""
    out = tmp_path_factory.mktemp("prepare-device") / "out"
    args = [a for m in tokenize_manifests for a in ("--manifest", m)]
    done = uti_in_process("tokenize", *args, "--out", str(out), "--shard-samples", "3", "--num-actors", "1",
                          "--read-in", "tasks", "--prepare-on", "device", "--no-progress")
    assert done.returncode == 0, done.stderr
    return reference_run(3)[0], out


def _samples(out):
    return {s.meta["id"]: s for s in ShardReader(str(out), expected_token_space=TokenSpace.load(out))}


def test_prepare_on_device_gives_the_readers_audio_tokens_and_valid_images(device_run, default_tokenizer):
    reader_out, device_out = device_run
    reader, device = _samples(reader_out), _samples(device_out)
    assert set(reader) == set(device) and len(device) == 10
    tok = default_tokenizer
    for id_, s in device.items():
        if s.meta["modality"] == "audio":
            assert np.array_equal(s.tokens, reader[id_].tokens) and s.meta == reader[id_].meta, id_
            continue
        assert tok.check_image_tokens(s.tokens, s.meta).shape == (16, 16)
        assert tok.decode_image(s.tokens, s.meta).shape == (64, 64, 3)
        # The job's image tokens are those of torch's resize (the device's), not of PIL's.
        raw = load_media(ManifestRow(id=id_, dataset="llava", modality="image", path=s.meta["source"], split="train"),
                         limits=LimitsConfig(), prepare=False)
        ids, _ = tok.encode_image(prepare_image(raw.data, 64).numpy())
        assert np.array_equal(s.tokens, ids), id_
    images = [i for i, s in device.items() if s.meta["modality"] == "image"]
    assert any(not np.array_equal(device[i].tokens, reader[i].tokens) for i in images)  # PIL's pixels are not torch's


def test_a_broken_file_in_device_mode_is_an_error_row(device_run):
    reader_out, device_out = device_run
    rows = [{k: e[k] for k in ("id", "stage", "reason")}
            for out in (reader_out, device_out) for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())]
    assert rows[:3] == rows[3:] and {r["id"]: r["reason"] for r in rows} == {
        "clotho:corrupt.wav": "unreadable", "clotho:nan.wav": "nan_or_inf", "llava:trunc": "undecodable_image"}


def test_a_sample_that_fails_device_preparation_is_an_error_row_not_a_crashed_chunk(ray_session, tmp_path):
    """Raw media the device cannot prepare (a read result whose pixels are no image) fails alone, stage
    "prepare"; the chunk's other samples, prepared on the device, are encoded."""
    from ray_jobs.actor import CodecWorker
    from uti.config import load_config

    good = _row(_wav(tmp_path / "a.wav", 2, 16000), "audio", "d:a")
    pic = tmp_path / "p.png"
    Image.fromarray(synth_image(size=80, seed=2)).save(pic)
    rows = [good, _row(pic, "image", "d:p"), _row(pic, "image", "d:bad")]
    items = read_rows(rows[:2], sample_rate=24000, channels=1, proc_size=64, limits=LimitsConfig(), prepare=False)
    items.append(ReadResult("d:bad", data=np.zeros((5, 5), np.uint8), source_sha256="0" * 64, prepared=False))
    worker = CodecWorker(config=load_config(None), token_space_json=None, out=str(tmp_path), device="cpu", threads=1)
    stats, chunk = worker.encode_chunk(split="train", shard="shard-000000", index=0, rows=rows,
                                       media=[ray_session.put(items)])
    assert [s.id for s in chunk.samples] == ["d:a", "d:p"] and stats.num_errors == 1
    (error,) = chunk.errors
    assert (error["id"], error["stage"], error["reason"]) == ("d:bad", "prepare", "prepare_error")
    assert "uint8 (H, W, 3)" in error["detail"]
