"""Codec adapters on real architectures with fixed-seed weights, and the real weight-loading paths."""

import numpy as np
import pytest
import torch

from uti.codecs.encodec_audio import EncodecAudioCodec
from uti.codecs.text import ByteTextCodec, HFTextCodec
from uti.codecs.vq_image import VQImageCodec, calibration_images, to_rgb_array
from uti.config import AudioConfig, ImageConfig, TextConfig, UTIConfig
from uti.errors import ConfigError, TokenSpaceMismatch, WeightsError
from uti.tokenizer import UnifiedTokenizer

LENGTHS = (1, 320, 7001, 16800, 24000, 31234)


@pytest.fixture(scope="module")
def encodec24():
    return EncodecAudioCodec()


def _clips(lengths, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = [torch.arange(n) / 24000.0 for n in lengths]
    # structured signals (chirp + noise): random noise alone hides near-tie flips
    return [(0.4 * torch.sin(2 * np.pi * (200 + 3000 * x) * x) + 0.05 * torch.randn(n, generator=g)).repeat(channels, 1)
            for x, n in zip(t, lengths)]


def test_encodec24_sizes_are_read_from_the_model(encodec24):
    assert (encodec24.sample_rate, encodec24.channels, encodec24.n_q, encodec24.codebook_size) == (24000, 1, 8, 1024)
    assert encodec24.frame_rate == 75.0 and encodec24.hop_length == 320
    assert EncodecAudioCodec(bandwidth=1.5).n_q == 2


def test_encodec24_batch_equals_single_and_is_deterministic(encodec24):
    clips = _clips(LENGTHS)
    batch = encodec24.encode(clips)
    for clip, enc in zip(clips, batch):
        alone = encodec24.encode([clip])[0]
        assert np.array_equal(alone.codes, enc.codes)
        assert enc.codes.shape == (encodec24.expected_frames(clip.shape[1]), 8)
    again = EncodecAudioCodec().encode(clips)
    assert all(np.array_equal(a.codes, b.codes) for a, b in zip(batch, again))


def test_random_codebooks_are_used_not_collapsed(encodec24):
    codes = encodec24.encode(_clips([48000]))[0].codes
    assert all(len(np.unique(codes[:, k])) > 10 for k in range(codes.shape[1]))


def test_encodec24_decode_length_and_rate(encodec24):
    enc = encodec24.encode(_clips([7001]))[0]
    wav = encodec24.decode(enc)
    assert wav.shape == (1, 7001) and torch.isfinite(wav).all()


def test_encodec48_segments_batch_equals_single_and_decodes():
    codec = EncodecAudioCodec(model="encodec_48khz", bandwidth=6.0)
    assert (codec.sample_rate, codec.channels, codec.n_q) == (48000, 2, 4)
    clips = _clips([48000 * 2 + 500, 30000, 100], channels=2)
    batch = codec.encode(clips)
    for clip, enc in zip(clips, batch):
        alone = codec.encode([clip])[0]
        assert np.array_equal(alone.codes, enc.codes) and alone.extra == enc.extra
        assert sum(enc.extra["segment_frames"]) == enc.codes.shape[0] == codec.expected_frames(clip.shape[1])
        assert codec.decode(enc).shape == clip.shape


def test_seed_changes_fingerprint(encodec24):
    assert EncodecAudioCodec(weights="random:1").fingerprint != encodec24.fingerprint


def test_unsupported_bandwidth_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of"):
        EncodecAudioCodec(bandwidth=5.0)


def test_local_checkpoint_path_loads_weights_only(tmp_path, encodec24):
    path = tmp_path / "my_encodec.th"
    torch.save(encodec24._net.state_dict(), path)
    loaded = EncodecAudioCodec(weights=str(path))
    assert loaded.fingerprint == encodec24.fingerprint
    assert loaded.descriptor().weights == "pretrained"
    clip = _clips([9000])
    assert np.array_equal(loaded.encode(clip)[0].codes, encodec24.encode(clip)[0].codes)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.th"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError, match="weights-only"):
        EncodecAudioCodec(weights=str(path))
    assert not (tmp_path / "pwned").exists()


def test_official_name_with_wrong_checksum_and_missing_path(tmp_path, encodec24):
    bad = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(encodec24._net.state_dict(), bad)
    with pytest.raises(WeightsError, match="SHA-256"):
        EncodecAudioCodec(weights=str(tmp_path))  # a directory holding the official file name
    with pytest.raises(WeightsError, match="does not exist"):
        EncodecAudioCodec(weights=str(tmp_path / "missing.th"))


def test_pretrained_without_cache_or_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(WeightsError, match="torch hub cache"):
        EncodecAudioCodec(weights="pretrained")


def test_pretrained_from_torch_hub_cache(tmp_path, monkeypatch, encodec24):
    import hashlib

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    staged = tmp_path / "staged.th"
    torch.save(encodec24._net.state_dict(), staged)
    # The official file name carries a SHA-256 prefix; name our file after its own hash so the check passes.
    import uti.codecs.encodec_audio as mod

    digest = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
    monkeypatch.setitem(mod._CHECKPOINTS, "encodec_24khz", f"encodec_24khz-{digest}.th")
    staged.rename(tmp_path / "checkpoints" / f"encodec_24khz-{digest}.th")
    assert EncodecAudioCodec(weights="pretrained").fingerprint == encodec24.fingerprint


@pytest.fixture(scope="module")
def vq():
    return VQImageCodec(ImageConfig())


def test_vq_grid_is_introspected_and_batch_equals_single(vq):
    assert vq.grid == (16, 16) and vq.codebook_size == 1024 and vq.proc_size == (64, 64)
    images = list(calibration_images(64, 4, seed=7))
    batch = vq.encode(images)
    assert all(np.array_equal(vq.encode([im])[0], codes) for im, codes in zip(images, batch))
    assert all(len(np.unique(c)) > 50 for c in batch)
    assert vq.decode(batch[0]).shape == (64, 64, 3)


def test_vq_local_directory_round_trip(tmp_path, vq):
    vq._net.save_pretrained(tmp_path / "vq")
    loaded = VQImageCodec(ImageConfig(weights=str(tmp_path / "vq")), device="cpu")
    assert loaded.fingerprint == vq.fingerprint and loaded.grid == vq.grid
    im = calibration_images(64, 1, seed=3)[0]
    assert np.array_equal(loaded.encode([im])[0], vq.encode([im])[0])
    with pytest.raises(WeightsError, match="config.json"):
        VQImageCodec(ImageConfig(weights=str(tmp_path)))


def test_image_modes_are_normalized_to_rgb():
    from PIL import Image

    rgb = calibration_images(40, 1, seed=1)[0]
    for img in (Image.fromarray(rgb).convert("CMYK"), Image.fromarray(rgb).convert("P"),
                Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).convert("I;16"),
                Image.fromarray(rgb).convert("RGBA"), Image.fromarray(rgb).convert("L")):
        arr = to_rgb_array(img, 32)
        assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def test_byte_text_codec_is_lossless():
    codec = ByteTextCodec()
    s = 'Bäckerei, "früh" — 朝'
    assert codec.decode(codec.encode(s)) == s and max(codec.encode(s)) < 256


def test_hf_text_tokenizer_from_local_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a dog barks", "a car passes by", "birds sing"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    codec = HFTextCodec(tmp_path / "tok")
    ids = codec.encode("a dog passes")
    assert codec.decode(ids).split() == ["a", "dog", "passes"] and codec.vocab_size == len(tok.get_vocab())
    cfg = UTIConfig(text=TextConfig(kind="hf", path=str(tmp_path / "tok")))
    space = UnifiedTokenizer(cfg, modalities=("text",)).space
    assert space.range("text").size == codec.vocab_size and space.codecs["text"].fingerprint == codec.descriptor().fingerprint


def test_loading_codecs_against_another_token_space_fails(default_space):
    with pytest.raises(TokenSpaceMismatch):
        UnifiedTokenizer(UTIConfig(audio=AudioConfig(weights="random:5")), modalities=("audio",), token_space=default_space)


def test_random_weights_are_identical_across_threads_and_cache(tmp_path, default_space):
    """`random:0` must be bit-identical everywhere: uncached, one thread, another process."""
    import json
    import os
    import subprocess
    import sys

    code = ("import torch, json; torch.set_num_threads(1)\n"
            "from uti.tokenizer import UnifiedTokenizer\n"
            "s = UnifiedTokenizer().space\n"
            "print(json.dumps({m: c.fingerprint for m, c in s.codecs.items()}))")
    env = {**os.environ, "UTI_CACHE_DIR": str(tmp_path / "empty-cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {m: c.fingerprint for m, c in default_space.codecs.items()}
    assert any((tmp_path / "empty-cache" / "random-weights").iterdir())
