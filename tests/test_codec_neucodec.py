"""NeuCodec (`kind: neucodec`, transformers.NeuCodecModel): 16 kHz in, 24 kHz out, one FSQ code per 320
samples, on its `arch: small` architecture (the real classes, a tiny semantic model) with fixed-seed weights.

The sizes the token space records are the loaded model's; frames follow the model's own framing (the
shorter of its semantic and acoustic branches, measured here on both); decode gives exactly
decoded_samples(n) samples at 24 kHz; `uti audit` passes and writes recon.wav at 24 kHz; tokens are the
same in another process, from a local folder, and at encode_batch 4 whichever clips share a call.
Built once per module (the random weights are cached by uti across processes).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from uti.assets import synth_audio
from uti.codecs.base import EncodedAudio
from uti.codecs.batching import bucket_frames, plan_passes
from uti.codecs.neucodec import NeuCodecAudioCodec
from uti.codecs.registry import build_audio_codec, codec_class
from uti.config import config_from_yaml
from uti.errors import ConfigError, DecodeRefused, WeightsError
from uti.token_space import TokenSpace, expected_audio_frames, write_token_space
from uti.tokenizer import UnifiedTokenizer

LINE = "audio: {kind: neucodec, arch: small}"
CONFIG = "text: {kind: byte}\n" + LINE + "\n"
# whole frames, and lengths that are not: 321..639 samples are one frame, 16001 is 50
LENGTHS = (320, 321, 639, 640, 1000, 3300, 4799, 9600, 16001)


@pytest.fixture(scope="module")
def tok() -> UnifiedTokenizer:
    return UnifiedTokenizer(config_from_yaml(CONFIG))


def clips(n_list=(3300, 4800, 9600, 7001)) -> list[torch.Tensor]:
    return [torch.from_numpy(synth_audio("speechlike" if k % 2 == 0 else "chirp", seconds=n / 16000, sample_rate=16000,
                                         seed=k))[None, :n].float() for k, n in enumerate(n_list)]


def token_digest(tok: UnifiedTokenizer) -> dict[str, str]:
    items = tok.encode_audios(clips())
    return {"space": tok.space.id,
            "tokens": hashlib.sha256(b"".join(ids.astype("<u4").tobytes() for ids, _ in items)).hexdigest()}


def branch_frames(codec: NeuCodecAudioCodec, n: int) -> tuple[int, int]:
    """(acoustic, semantic) frames the model's two branches give a clip of n samples, through its extractor."""
    x = torch.from_numpy(synth_audio("speechlike", seconds=n / 16000 + 0.01, sample_rate=16000, seed=n))[None, None, :n]
    with torch.inference_mode():
        f = codec._inputs(x.float())
        acoustic = codec._net.acoustic_encoder(f["input_values"]).shape[-1]
        semantic = codec._net.semantic_encoder(f["input_features"], attention_mask=f["input_features_mask"])
    return int(acoustic), int(semantic.last_hidden_state.shape[1])


# ---- sizes and the token space ---------------------------------------------------------------------------
def test_token_space_records_the_loaded_models_sizes_and_both_rates(tok, tmp_path):
    codec, net = tok.audio, tok.audio._net
    assert isinstance(codec, NeuCodecAudioCodec)
    sizes = codec.runtime_sizes()
    assert sizes["codebook_size"] == net.quantizer.quantizer.codebook.shape[0] == 4 ** 4
    assert sizes["hop_length"] == net.hop_length == net.config.encoder_hop_length == 320
    assert net.config.hop_length == 480  # the decoder's hop, at 24 kHz: not the frame's samples at 16 kHz
    assert (sizes["sample_rate"], sizes["output_sample_rate"], sizes["frame_rate"]) == (16000, 24000, 50.0)
    assert (sizes["n_q"], sizes["channels"]) == (1, 1)
    desc = tok.space.codecs["audio"]
    assert desc.kind == "neucodec" and desc.weights == "random:0" and len(desc.fingerprint) == 64
    assert all(desc.params[k] == v for k, v in sizes.items())
    assert desc.params["sample_rate"] == 16000 and desc.params["output_sample_rate"] == 24000
    assert desc.params["framing"] == {"pad_to": 320, "extra": -319}
    assert desc.params["fsq_levels"] == [4, 4, 4, 4] and desc.params["arch"]["input_sampling_rate"] == 16000
    feats = desc.params["features"]  # the semantic branch's preprocessing is part of the token space
    assert (feats["frame_length"], feats["frame_shift"], feats["num_mel_bins"], feats["hop_length"]) == (400, 160, 80, 320)
    layout = tok.space.layout("audio")
    assert (layout.kind, layout.tokens_per_frame) == ("fsq", 1) and desc.layout.kind == "fsq"
    assert [r.size for r in tok.space.audio_levels] == [sizes["codebook_size"]]
    write_token_space(tok.space, tmp_path)
    assert TokenSpace.load(tmp_path).id == tok.space.id


def test_variants_list_the_real_sizes_without_loading_weights():
    from transformers import NeuCodecConfig

    (v,) = codec_class("neucodec").variants()
    real = NeuCodecConfig()
    assert v.model == "neucodec" and v.sizes == {
        "sample_rate": 16000, "output_sample_rate": 24000, "channels": 1, "frame_rate": 50.0, "hop_length": 320,
        "codebook_size": 65536, "n_q": 1, "layout": "fsq"}
    assert int(np.prod(real.quantization_levels)) == 4 ** 8 and real.encoder_hop_length == 320
    assert "neuphonic/neucodec" in v.note


# ---- frames and decoded lengths --------------------------------------------------------------------------
def test_frames_are_the_shorter_branch_and_the_recorded_rule_gives_them(tok):
    codec, params = tok.audio, tok.space.codecs["audio"].params
    for n in LENGTHS:
        acoustic, semantic = branch_frames(codec, n)
        assert acoustic == n // 320 + 1 and semantic == n // 320, n  # the semantic branch is the shorter
        assert codec.expected_frames(n) == expected_audio_frames(params, n) == min(acoustic, semantic), n


def test_round_trip_frames_and_exact_decoded_length_at_24khz(tok):
    codec, layout = tok.audio, tok.space.layout("audio")
    g = torch.Generator().manual_seed(3)
    for n in LENGTHS:
        ids, meta = tok.encode_audio(0.2 * torch.randn(1, n, generator=g))
        assert meta["n_samples"] == n and meta["n_frames"] == codec.expected_frames(n) == n // 320
        assert ids.size == layout.expected_len(meta) and layout.first_violation(ids) is None
        wav = tok.decode_audio(ids, meta)
        # the clip's duration at 24 kHz, rounded down to its whole frames (480 samples each at 24 kHz)
        assert wav.shape == (1, codec.decoded_samples(n)) == (1, min(n * 24000 // 16000, n // 320 * 480)), n
        if n % 320 == 0:
            assert wav.shape[1] == n * 24000 // 16000
        assert torch.isfinite(wav).all()


def test_strict_decode_refuses_a_wrong_frame_count_or_code(tok):
    codec = tok.audio
    ids, meta = tok.encode_audio(clips()[0])
    with pytest.raises(DecodeRefused, match="n_frames"):
        tok.decode_audio(ids[:-1], meta)
    with pytest.raises(DecodeRefused, match="n_frames"):
        tok.decode_audio(ids[:-1], {**meta, "n_frames": meta["n_frames"] - 1})  # meta disagrees with n_samples
    wrong = ids.copy()
    wrong[2] = tok.space.range("text").start
    with pytest.raises(DecodeRefused, match="frame 2 level 0"):
        tok.decode_audio(wrong, meta)
    codes = codec.encode(clips()[:1])[0]
    with pytest.raises(DecodeRefused, match=r"outside \[0, 256\)"):
        codec.decode(EncodedAudio(codes=np.full_like(codes.codes, 256), n_samples=codes.n_samples))
    with pytest.raises(DecodeRefused, match="expected 10"):
        codec.decode(EncodedAudio(codes=codes.codes[:-1], n_samples=codes.n_samples))


def test_a_clip_shorter_than_one_frame_is_refused_naming_the_rule(tok):
    with pytest.raises(ValueError, match="clip 1: 319 samples.*at least 320 samples"):
        tok.audio.encode([clips()[0], torch.zeros(1, 319)])


def test_arch_whose_frame_has_no_whole_24khz_length_is_refused():
    with pytest.raises(ConfigError, match="audio.arch: the decoder's 4 samples per frame at 24000 Hz"):
        UnifiedTokenizer(config_from_yaml("text: {kind: byte}\naudio: {kind: neucodec, arch: {downsampling_ratios: [3]}}\n"))


def test_random_fsq_codes_spread_over_every_dimension(tok):
    clip = torch.from_numpy(synth_audio("speechlike", seconds=2.0, sample_rate=16000, seed=9))[None].float()
    codes = tok.audio.encode([clip])[0].codes[:, 0]
    assert np.unique(codes).size >= 8, np.unique(codes)
    digits = [(codes // 4 ** d) % 4 for d in range(4)]  # the FSQ levels of each of the 4 dimensions
    assert all(np.unique(d).size >= 2 for d in digits), [np.unique(d) for d in digits]


# ---- processes, folders, batches ------------------------------------------------------------------------
def test_determinism_across_processes(tok):
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_codec_neucodec import CONFIG, token_digest\n"
        "from uti.config import config_from_yaml\n"
        "from uti.tokenizer import UnifiedTokenizer\n"
        "print(json.dumps(token_digest(UnifiedTokenizer(config_from_yaml(CONFIG)))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(pathlib.Path(__file__).parent)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == token_digest(tok)


def test_local_folder_gives_the_same_weights_features_and_tokens(tok, tmp_path):
    folder = tmp_path / "neucodec"
    tok.audio._net.save_pretrained(folder, safe_serialization=True)
    tok.audio._features.save_pretrained(folder)
    line = LINE.replace("arch: small", f"weights: {json.dumps(str(folder))}")
    loaded = UnifiedTokenizer(config_from_yaml("text: {kind: byte}\n" + line + "\n"))
    assert loaded.audio.fingerprint == tok.audio.fingerprint and loaded.space.codecs["audio"].weights == "pretrained"
    assert loaded.space.codecs["audio"].params == tok.space.codecs["audio"].params
    assert token_digest(loaded)["tokens"] == token_digest(tok)["tokens"]

    # an extractor that frames by the decoder's 480 (config.hop_length) instead of the encoder's 320
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**pre, "hop_length": 480}))
    with pytest.raises(WeightsError, match="frames 16000 Hz audio by 480, the model by 320"):
        build_audio_codec(config_from_yaml(line).audio)
    # a folder whose config does not fit its weights
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_levels": [4, 4, 4]}))
    with pytest.raises(WeightsError, match=f"{folder}"):
        build_audio_codec(config_from_yaml(line).audio)


@pytest.fixture(scope="module")
def batched(tok):
    codec = build_audio_codec(config_from_yaml(CONFIG.replace("small}", "small, encode_batch: 4}")).audio)
    assert codec.encode_batch == 4 and codec.fingerprint == tok.audio.fingerprint
    return codec


def test_encode_batch_4_codes_do_not_depend_on_the_other_clips(batched):
    codec = batched
    # units = n // 320; 9 and 10 units share bucket 10 (five clips: two passes), 2 and 15 have their own
    lengths = [3200, 700, 3000, 2887, 5000, 3333, 3519]
    items = clips(lengths)
    shapes: list[tuple[int, ...]] = []
    hook = codec._net.acoustic_encoder.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        together = codec.encode(items)
    finally:
        hook.remove()
    log = codec.pass_log.take()
    plan = plan_passes(lengths, encode_batch=4, bucket=lambda n: bucket_frames(n // 320) * 320 + 319)
    assert (log.passes, log.items, log.dummies) == (len(plan), 7, 4 * 4 - 7) == (4, 7, 9)
    # every pass (4, 1, bucket samples + the extractor's one, in whole frames)
    assert sorted(s[2] for s in shapes) == sorted((bucket_frames(p.length // 320) + 1) * 320 for p in plan)
    assert {s[:2] for s in shapes} == {(4, 1)}
    alone = [codec.encode([c])[0] for c in items]
    backwards = list(reversed(codec.encode(list(reversed(items)))))
    for k, (a, b, c) in enumerate(zip(together, alone, backwards)):
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.codes, c.codes), f"clip {k}"
        assert a.codes.shape == (lengths[k] // 320, 1)
    assert codec.decode(together[1]).shape == (1, codec.decoded_samples(700)) == (1, 960)
    rule = codec.padding_rule()
    assert codec.encode_policy().padding == rule and "ceil((samples - 319) / 320)" in rule and "u * 320 + 319" in rule


# ---- the audit bundle ------------------------------------------------------------------------------------
def test_audit_passes_and_writes_recon_at_24khz(tmp_path):
    import soundfile as sf

    from uti.audit import run_audit

    assets = tmp_path / "assets"
    assets.mkdir()
    sf.write(str(assets / "speech.wav"), synth_audio("speechlike", seconds=0.61, sample_rate=16000, seed=4), 16000)
    config = tmp_path / "uti.yaml"
    config.write_text(CONFIG)
    result = run_audit(out=tmp_path / "bundle", config=str(config), assets=assets)
    failed = {c.name: c.detail for c in result.checks if c.hard and not c.ok}
    assert result.passed, failed
    assert {"batch_equals_single.audio", "decode.audio", "config_size_match"} <= {c.name for c in result.checks}
    assert json.loads((tmp_path / "bundle" / "report.json").read_text())["passed"] is True
    info = sf.info(str(tmp_path / "bundle" / "recon.wav"))
    assert info.samplerate == 24000 and info.channels == 1
