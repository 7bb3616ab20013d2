"""WavTokenizer (`kind: wavtokenizer`, transformers.WavTokenizerModel) on its `arch: small` architecture with
fixed-seed weights: the token space is built from the sizes the loaded model reports, the frame rule is
the model's own for lengths on and off the hop, round trips decode to 24 kHz at the clip's length,
strict decode refuses what does not fit, encode is the same in another process and at encode_batch 4
whichever clips share a call, the random codebook is used, a local Hugging Face folder loads to the same
weights and tokens (and a folder whose weights do not fit its config is refused by name), and the
extractor's peak normalization is applied bit for bit. The small model is built once per module (its
random weights are cached by uti across processes).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uti.assets import synth_audio
from uti.codecs.base import EncodedAudio
from uti.codecs.registry import build_audio_codec
from uti.codecs.wavtokenizer import SMALL, WavTokenizerAudioCodec
from uti.config import config_from_yaml
from uti.errors import ConfigError, DecodeRefused, WeightsError
from uti.token_space import expected_audio_frames
from uti.tokenizer import UnifiedTokenizer

LINE = "audio: {kind: wavtokenizer, arch: small}"
HOP = 600  # the small architecture keeps the 40 tokens/s model's strides
LENGTHS = [1, 2, 599, 600, 601, 1199, 7000, 24000, 24001]
BATCH = 4


def config_text(line: str = LINE) -> str:
    return "text: {kind: byte}\n" + line + "\n"


def load(line: str) -> UnifiedTokenizer:
    return UnifiedTokenizer(config_from_yaml(config_text(line)))


@pytest.fixture(scope="module")
def tok() -> UnifiedTokenizer:
    return load(LINE)


@pytest.fixture(scope="module")
def batched():
    """The same small model at encode_batch 4 (random weights come from uti's cache: no second calibration)."""
    return build_audio_codec(config_from_yaml(f"text: {{kind: byte}}\n{LINE[:-1]}, encode_batch: {BATCH}}}\n").audio)


def clips_for(sample_rate: int) -> list[torch.Tensor]:
    out = [torch.from_numpy(synth_audio("speechlike", seconds=s, sample_rate=sample_rate, seed=i))[None].float()
           for i, s in enumerate((0.05, 0.3, 0.71))]
    return out + [torch.full((1, 1), 0.01), torch.zeros(1, 601)]


def token_digest(tok: UnifiedTokenizer) -> dict[str, str]:
    items = tok.encode_audios(clips_for(tok.audio.sample_rate))
    return {"space": tok.space.id, "fingerprint": tok.audio.fingerprint,
            "tokens": hashlib.sha256(b"".join(ids.astype("<u4").tobytes() for ids, _ in items)).hexdigest()}


# ---- sizes, layout, frames ------------------------------------------------------------------------------
def test_token_space_is_built_from_the_sizes_the_model_reports(tok):
    codec, net = tok.audio, tok.audio._net
    sizes = codec.runtime_sizes()
    assert sizes == {"sample_rate": 24000, "channels": 1, "n_q": 1, "codebook_size": SMALL["codebook_size"],
                     "frame_rate": 40.0, "hop_length": HOP}
    assert sizes["codebook_size"] == net.encoder_model.quantizer.codebook.embed.shape[0]
    assert sizes["hop_length"] == int(np.prod(net.config.upsampling_ratios))
    desc = tok.space.codecs["audio"]
    assert desc.kind == "wavtokenizer" and desc.weights == "random:0" and len(desc.fingerprint) == 64
    assert all(desc.params[k] == v for k, v in sizes.items())
    assert desc.params["arch"]["hidden_size"] == SMALL["hidden_size"] and desc.params["normalize_audio"] is False
    assert desc.params["bandwidth_id"] == 0
    [level] = tok.space.audio_levels
    assert level.size == sizes["codebook_size"]
    layout = tok.space.layout("audio")
    assert (layout.kind, layout.tokens_per_frame) == ("frame_major", 1) and desc.layout.kind == "frame_major"


def test_frames_are_what_the_model_gives_for_any_length(tok):
    """ceil(n / hop), from the model itself (it pads inside every strided convolution), and the token
    space's recorded rule gives the same without the codec."""
    net, params = tok.audio._net, tok.space.codecs["audio"].params
    with torch.inference_mode():
        got = [int(net.encode(torch.randn(1, 1, n)).audio_codes.shape[-1]) for n in LENGTHS]
    assert got == [-(-n // HOP) for n in LENGTHS] == [tok.audio.expected_frames(n) for n in LENGTHS]
    assert [expected_audio_frames(params, n) for n in LENGTHS] == got


# ---- encode / decode ------------------------------------------------------------------------------------
def test_round_trip_shapes_and_strict_decode(tok):
    codec, layout = tok.audio, tok.space.layout("audio")
    clips = [0.4 * torch.sin(2 * np.pi * 440 * torch.arange(n) / 24000)[None] + 0.01 for n in LENGTHS]
    for clip, (ids, meta) in zip(clips, tok.encode_audios(clips)):
        n = clip.shape[1]
        assert meta["n_samples"] == n and meta["n_frames"] == -(-n // HOP) and meta["n_q"] == 1
        assert ids.size == layout.expected_len(meta) == meta["n_frames"] and layout.first_violation(ids) is None
        wav = tok.decode_audio(ids, meta)
        assert wav.shape == (1, n) and torch.isfinite(wav).all()  # decode gives frames * hop, cut to the clip
    enc = codec.encode([clips[-1]])[0]
    assert codec._decode_codes(enc.codes).shape == (1, enc.codes.shape[0] * HOP)
    with pytest.raises(DecodeRefused, match="frames for 24001 samples, expected 41"):
        codec.decode(EncodedAudio(codes=enc.codes[:-1], n_samples=24001))
    bad = enc.codes.copy()
    bad[3, 0] = codec.codebook_size
    with pytest.raises(DecodeRefused, match=r"outside \[0, 64\)"):
        codec.decode(EncodedAudio(codes=bad, n_samples=24001))
    ids, meta = tok.encode_audio(clips[-1])
    with pytest.raises(DecodeRefused, match="n_frames"):
        tok.decode_audio(ids[:-1], {**meta, "n_frames": meta["n_frames"] - 1})


def test_random_codebook_is_used(tok):
    """The calibration (rescaled last encoder layer, codebook seeded from its outputs) spreads a synthetic
    clip's frames over the codebook; uncalibrated, every frame would get code 0."""
    clip = torch.from_numpy(synth_audio("speechlike", seconds=2.0, sample_rate=24000, seed=9))[None].float()
    codes = tok.audio.encode([clip])[0].codes
    assert np.unique(codes).size >= 10, np.unique(codes)


def test_encode_batch_1_gives_the_models_own_codes(tok):
    """Each clip alone, as it is (the model pads it itself): the codes of WavTokenizerModel.encode."""
    net = tok.audio._net
    for clip in clips_for(24000):
        with torch.inference_mode():
            want = net.encode(clip[None]).audio_codes[0].T.numpy()
        assert np.array_equal(tok.audio.encode([clip])[0].codes, want)


def test_determinism_across_processes(tok):
    here = token_digest(tok)
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_codec_wavtokenizer import LINE, load, token_digest\n"
        "print(json.dumps(token_digest(load(LINE))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


# ---- batching -------------------------------------------------------------------------------------------
def test_encode_batch_4_codes_do_not_depend_on_the_other_clips(batched):
    """Mixed lengths (five in the bucket of 10 frames: two passes; two in buckets of their own): one call,
    each clip alone and the reversed call give the same codes, every pass (4, 1, bucket samples)."""
    codec = batched
    lengths = [10 * HOP, 3 * HOP - 2, 10 * HOP - HOP // 2, 9 * HOP - 7, 13 * HOP - 5, 9 * HOP, 10 * HOP - 1]
    g = torch.Generator().manual_seed(7)
    clips = [(0.3 * torch.sin(2 * np.pi * (180 + 70 * k) * torch.arange(n) / 24000)
              + 0.05 * torch.randn(n, generator=g))[None] for k, n in enumerate(lengths)]
    shapes: list[tuple[int, ...]] = []
    hook = codec._net.encoder_model.encoder.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        together = codec.encode(clips)
    finally:
        hook.remove()
    assert sorted(shapes) == [(BATCH, 1, 3 * HOP), (BATCH, 1, 10 * HOP), (BATCH, 1, 10 * HOP), (BATCH, 1, 14 * HOP)]
    alone = [codec.encode([c])[0] for c in clips]
    backwards = codec.encode(clips[::-1])[::-1]
    for k, (a, b, c) in enumerate(zip(together, alone, backwards)):
        assert a.codes.shape == (-(-lengths[k] // HOP), 1)
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.codes, c.codes), f"clip {k}"
    assert np.unique(np.concatenate([e.codes for e in together])).size >= 8  # not one code everywhere
    assert codec.padding_rule() == codec.encode_policy().padding and "bucket" in codec.padding_rule()


# ---- weights: local folders, variants ------------------------------------------------------------------
def _folder_line(folder: Path, extra: str = "") -> str:
    return f"audio: {{kind: wavtokenizer, weights: {json.dumps(str(folder))}{extra}}}"


def test_local_folder_loads_the_same_weights_and_tokens(tok, tmp_path):
    tok.audio._net.save_pretrained(tmp_path / "wt", safe_serialization=True)
    loaded = load(_folder_line(tmp_path / "wt"))
    assert loaded.audio.fingerprint == tok.audio.fingerprint and loaded.space.codecs["audio"].weights == "pretrained"
    assert loaded.space.codecs["audio"].params == tok.space.codecs["audio"].params
    assert token_digest(loaded)["tokens"] == token_digest(tok)["tokens"]
    with pytest.raises(ConfigError, match="arch: applies to random weights"):
        load(_folder_line(tmp_path / "wt", ", arch: small"))
    with pytest.raises(ConfigError, match=r"model: '75token', but .* hop 600 \(40token\)"):
        load(_folder_line(tmp_path / "wt", ", model: 75token"))
    (tmp_path / "wt" / "model.safetensors").rename(tmp_path / "wt" / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="safetensors only"):
        load(_folder_line(tmp_path / "wt"))


@pytest.mark.parametrize("change", [{"codebook_size": 32}, {"hidden_size": 16, "codebook_dim": 16}])
def test_a_folder_whose_weights_do_not_fit_its_config_is_refused(tok, tmp_path, change):
    """config.json of the small model, weights of another size: refused, naming the folder and a weight."""
    from transformers import WavTokenizerConfig, WavTokenizerModel

    folder = tmp_path / "wt"
    tok.audio._net.save_pretrained(folder, safe_serialization=True)
    other = WavTokenizerModel(WavTokenizerConfig(**{**SMALL, **change}))
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    (tmp_path / "other" / "model.safetensors").replace(folder / "model.safetensors")
    with pytest.raises(WeightsError) as err:
        load(_folder_line(folder))
    message = str(err.value)
    assert str(folder) in message and "mismatched_keys" in message and "encoder_model." in message, message


def test_peak_normalization_is_the_extractors(tok, tmp_path):
    """A folder whose preprocessor_config.json turns normalize_audio on (as Apertus 1.5's does) encodes
    what WavTokenizerFeatureExtractor gives the model, bit for bit, and records it; the setting overrides."""
    from transformers import WavTokenizerFeatureExtractor

    folder = tmp_path / "wt"
    tok.audio._net.save_pretrained(folder, safe_serialization=True)
    extractor = WavTokenizerFeatureExtractor(normalize_audio=True, target_peak_dB_FS=-6.0)
    extractor.save_pretrained(folder)
    loaded = load(_folder_line(folder))
    params = loaded.space.codecs["audio"].params
    assert (params["normalize_audio"], params["target_peak_dbfs"]) == (True, -6.0)
    assert loaded.space.id != tok.space.id
    clips = clips_for(24000)[:3]
    got = loaded.audio.encode(clips)
    with torch.inference_mode():
        for clip, enc in zip(clips, got):
            x = extractor(clip[0].numpy(), sampling_rate=24000, return_tensors="pt")["input_values"]
            assert np.array_equal(enc.codes, loaded.audio._net.encode(x).audio_codes[0].T.numpy())
    plain = load(_folder_line(folder, ", normalize_audio: false"))
    assert plain.space.id == load(_folder_line(folder, ", normalize_audio: false, target_peak_dbfs: -1")).space.id
    assert plain.space.codecs["audio"].params == {**tok.space.codecs["audio"].params}
    with pytest.raises(ConfigError, match="target_peak_dbfs: must be a finite number"):
        load(_folder_line(folder, ", target_peak_dbfs: .nan"))


def test_variants_are_the_two_released_models():
    variants = {v.model: v for v in WavTokenizerAudioCodec.variants()}
    assert set(variants) == {"40token", "75token"}
    assert {k: (v.sizes["frame_rate"], v.sizes["hop_length"]) for k, v in variants.items()} == \
        {"40token": (40.0, 600), "75token": (75.0, 320)}
    assert all(v.sizes["sample_rate"] == 24000 and v.sizes["codebook_size"] == 4096 and v.sizes["n_q"] == 1
               for v in variants.values())
    assert "swiss-ai/wavtokenizer-large-unify-40token" in variants["40token"].note
    assert "novateur/WavTokenizer-large-speech-75token" in variants["75token"].note
    fast = load("audio: {kind: wavtokenizer, model: 75token, arch: small}").audio  # sizes read from the model
    assert (fast.hop_length, fast.frame_rate, fast.name) == (320, 75.0, "wavtokenizer_75token")
    assert fast.encode([torch.zeros(1, 321)])[0].codes.shape == (2, 1)
    with pytest.raises(ConfigError, match="audio.model: '50token' is not one of 40token, 75token"):
        load("audio: {kind: wavtokenizer, model: 50token, arch: small}")
