"""X-Codec (`kind: xcodec`) and the Higgs Audio v2 tokenizer (`kind: higgs_audio_v2`), the two adapters
on transformers' X-Codec family, each on its `arch: small` architecture (the real classes: DAC acoustic
branch, a one-layer HuBERT, RVQ) with fixed-seed, calibrated weights.

Per kind: the token space is built from the sizes the loaded model reports and records the semantic
branch's preprocessing, which a hook on the semantic model confirms; bandwidth chooses a prefix of the
RVQ levels; frames follow the recorded rule for lengths that are not whole frames; round trips and
strict decode; the codebooks are used; a second process gives the same tokens; a local folder gives
the same weights and tokens and a folder of another architecture is refused naming it; at
encode_batch 4 a clip's codes do not depend on the clips that share its call; variants() lists the
published models' sizes. Each model is built once per module (uti caches the random weights).
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
from uti.config import config_from_yaml
from uti.errors import ConfigError, DecodeRefused, WeightsError
from uti.token_space import expected_audio_frames
from uti.tokenizer import UnifiedTokenizer

AUDIO = {
    "xcodec": "audio: {kind: xcodec, arch: small}",
    "higgs_audio_v2": "audio: {kind: higgs_audio_v2, arch: small}",
}
KINDS = list(AUDIO)
# What each small architecture must report (read from the loaded model)
SIZES = {
    "xcodec": dict(sample_rate=16000, channels=1, n_q=4, codebook_size=64, frame_rate=50.0, hop_length=320,
                   bandwidth=1.2),
    "higgs_audio_v2": dict(sample_rate=24000, channels=1, n_q=4, codebook_size=64, frame_rate=25.0, hop_length=960,
                           bandwidth=0.6),
}
# Frames the model itself gives n unpadded samples (the modules' docstrings): why the adapter pads
UNPADDED_FRAMES = {"xcodec": lambda n: (n + 240) // 320, "higgs_audio_v2": lambda n: (n + 841) // 960}
LOWER = {"xcodec": (0.6, 2), "higgs_audio_v2": (0.3, 2)}  # a lower bandwidth of the small arch and its levels
# How each model feeds its semantic branch (transformers' _extract_semantic_features)
SEMANTIC = {
    "xcodec": dict(model_type="hubert", sample_rate=16000, resample=None, normalize=False, pad_each_side=160,
                   frame_step=1),
    "higgs_audio_v2": dict(model_type="hubert", sample_rate=16000, normalize=False, pad_each_side=160, frame_step=2),
}
BATCH = 4


def config_text(kind: str, extra: str = "") -> str:
    line = AUDIO[kind] if not extra else AUDIO[kind][:-1] + ", " + extra + "}"
    return "text: {kind: byte}\n" + line + "\n"


def load(text: str) -> UnifiedTokenizer:
    return UnifiedTokenizer(config_from_yaml(text))


@pytest.fixture(scope="module")
def toks():
    built: dict[str, UnifiedTokenizer] = {}

    def get(kind: str) -> UnifiedTokenizer:
        if kind not in built:
            built[kind] = load(config_text(kind))
        return built[kind]

    return get


def clips_for(tok: UnifiedTokenizer) -> list[torch.Tensor]:
    hop = tok.audio.hop_length
    speech = [tok.prepare_audio(synth_audio("speechlike", seconds=s, sample_rate=16000, seed=i), 16000)
              for i, s in enumerate((0.3, 0.71))]
    g = torch.Generator().manual_seed(3)
    odd = [0.2 * torch.randn(1, n, generator=g) for n in (1, hop - 1, hop, hop + 1, 3 * hop + hop // 2)]
    return speech + odd


def token_digest(tok: UnifiedTokenizer) -> dict[str, str]:
    """Token-space ID and the SHA-256 of every clip's tokens: what another process must reproduce."""
    items = tok.encode_audios(clips_for(tok))
    return {"space": tok.space.id,
            "tokens": hashlib.sha256(b"".join(ids.astype("<u4").tobytes() for ids, _ in items)).hexdigest()}


def with_inputs(module: torch.nn.Module, call):
    """call() while recording the input shape of every forward of `module`."""
    shapes: list[tuple[int, ...]] = []
    hook = module.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        return call(), shapes
    finally:
        hook.remove()


# ---- token space, sizes, recorded preprocessing ----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_token_space_is_built_from_the_sizes_the_model_reports(toks, kind):
    tok = toks(kind)
    codec, net = tok.audio, tok.audio._net
    sizes = codec.runtime_sizes()
    assert {k: sizes[k] for k in SIZES[kind]} == SIZES[kind]
    assert sizes["codebook_size"] == net.quantizer.quantizers[0].codebook.embed.shape[0]
    assert sizes["hop_length"] == int(np.prod(net.config.acoustic_model_config.downsampling_ratios))
    desc = tok.space.codecs["audio"]
    assert desc.kind == kind and desc.weights == "random:0" and len(desc.fingerprint) == 64
    assert all(desc.params[k] == v for k, v in sizes.items()) and desc.params["arch"]
    assert {k: desc.params["semantic"][k] for k in SEMANTIC[kind]} == SEMANTIC[kind]
    assert "right zeros to whole frames" in desc.params["padding"]
    if kind == "higgs_audio_v2":
        assert "24000 -> 16000" in desc.params["semantic"]["resample"]
    assert desc.params["framing"] == {"pad_to": sizes["hop_length"], "extra": 0}
    levels = tok.space.audio_levels
    assert len(levels) == sizes["n_q"] and all(r.size == sizes["codebook_size"] for r in levels)
    layout = tok.space.layout("audio")
    assert (layout.kind, layout.pattern) == ("frame_major", tuple(range(sizes["n_q"])))
    assert desc.layout.kind == "frame_major"


@pytest.mark.parametrize("kind", KINDS)
def test_recorded_semantic_preprocessing_is_what_the_model_feeds_its_semantic_branch(toks, kind):
    """A hook on the semantic model sees exactly the recorded preprocessing: the clip (resampled with
    torchaudio's defaults for Higgs) padded by pad_each_side zeros, and frame_step of its frames per code
    frame."""
    import torchaudio

    tok = toks(kind)
    codec, net, sem = tok.audio, tok.audio._net, tok.space.codecs["audio"].params["semantic"]
    clip = tok.prepare_audio(synth_audio("speechlike", seconds=0.4, sample_rate=16000, seed=5), 16000)
    frames = codec.expected_frames(clip.shape[1])
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, kwargs, output):
        seen["input"], seen["frames"] = args[0].detach().clone(), output.last_hidden_state.shape[1]

    hook = net.semantic_model.register_forward_hook(keep, with_kwargs=True)
    try:
        codec.encode([clip])
    finally:
        hook.remove()
    padded = torch.nn.functional.pad(clip, (0, frames * codec.hop_length - clip.shape[1]))  # whole frames
    if sem["resample"]:
        padded = torchaudio.functional.resample(padded, codec.sample_rate, sem["sample_rate"])
    pad = sem["pad_each_side"]
    assert torch.equal(seen["input"], torch.nn.functional.pad(padded, (pad, pad)))
    assert seen["frames"] == frames * sem["frame_step"]


@pytest.mark.parametrize("kind", KINDS)
def test_bandwidth_chooses_a_prefix_of_the_levels_and_is_recorded(toks, kind):
    tok = toks(kind)
    bandwidth, levels = LOWER[kind]
    lower = load(config_text(kind, f"bandwidth: {bandwidth}"))
    assert lower.audio.n_q == levels and lower.audio.fingerprint == tok.audio.fingerprint
    assert lower.space.codecs["audio"].params["bandwidth"] == bandwidth and len(lower.space.audio_levels) == levels
    assert lower.space.id != tok.space.id and lower.space.layout("audio").tokens_per_frame == levels
    clip = clips_for(tok)[1]
    full, part = tok.audio.encode([clip])[0].codes, lower.audio.encode([clip])[0].codes
    assert part.shape == (full.shape[0], levels) and np.array_equal(part, full[:, :levels])  # residual levels
    with pytest.raises(ConfigError, match=r"audio.bandwidth: 0.7 kbps is not one .* offers; choose one of \["):
        load(config_text(kind, "bandwidth: 0.7"))
    with pytest.raises(ConfigError, match="audio.bandwidth: must be a positive number"):
        config_from_yaml(config_text(kind, "bandwidth: -1"))


# ---- frames, round trips, strict decode ---------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_frames_follow_the_recorded_rule_and_the_model_pads_nothing_itself(toks, kind):
    """ceil(n / hop) frames for any n (the clip is padded to whole frames first), the rule the token space
    records; on whole frames the acoustic encoder gets the padded clip as it is (the model's own
    hop / 2 padding, for lengths its branches would frame differently, never runs)."""
    tok = toks(kind)
    codec, hop = tok.audio, tok.audio.hop_length
    params = tok.space.codecs["audio"].params
    lengths = [1, hop // 2, hop - 1, hop, hop + 1, 2 * hop - 1, 5 * hop + hop // 2, 7 * hop]
    g = torch.Generator().manual_seed(1)
    clips = [0.1 * torch.randn(1, n, generator=g) for n in lengths]
    encoded, shapes = with_inputs(codec._net.acoustic_encoder, lambda: codec.encode(clips))
    want = [-(-n // hop) for n in lengths]
    assert [e.codes.shape[0] for e in encoded] == want
    assert [codec.expected_frames(n) for n in lengths] == want == [expected_audio_frames(params, n) for n in lengths]
    assert [s[-1] for s in shapes] == [f * hop for f in want]
    # unpadded, the model drops a short tail: the rule its docstring states
    raw = [n for n in lengths if n >= hop // 2]
    with torch.inference_mode():
        got = [codec._net.encode(c[None], return_dict=True).audio_codes.shape[-1] for c in clips if c.shape[1] in raw]
    assert got == [UNPADDED_FRAMES[kind](n) for n in raw] and got != [-(-n // hop) for n in raw]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_shapes_and_strict_decode(toks, kind):
    tok = toks(kind)
    codec, layout = tok.audio, tok.space.layout("audio")
    clips = clips_for(tok)
    for clip, (ids, meta) in zip(clips, tok.encode_audios(clips)):
        n = clip.shape[1]
        assert meta["n_samples"] == n and meta["n_frames"] == codec.expected_frames(n) == -(-n // codec.hop_length)
        assert ids.dtype == np.uint32 and ids.size == layout.expected_len(meta) and layout.first_violation(ids) is None
        wav = tok.decode_audio(ids, meta)
        assert wav.shape[0] == 1 and n - codec.hop_length <= wav.shape[1] <= n and torch.isfinite(wav).all()
    enc = codec.encode([clips[1]])[0]
    assert codec.decode(enc).shape == (1, clips[1].shape[1])
    with pytest.raises(DecodeRefused, match="frames for"):
        codec.decode(EncodedAudio(codes=enc.codes[:-1], n_samples=enc.n_samples))
    bad = enc.codes.copy()
    bad[0, -1] = codec.codebook_size
    with pytest.raises(DecodeRefused, match="outside"):
        codec.decode(EncodedAudio(codes=bad, n_samples=enc.n_samples))
    with pytest.raises(DecodeRefused, match=r"codes must be \(n_frames >= 1, 4\)"):
        codec.decode(EncodedAudio(codes=enc.codes[:, :2], n_samples=enc.n_samples))


@pytest.mark.parametrize("kind", KINDS)
def test_random_codebooks_are_used(toks, kind):
    """Random weights leave the RVQ codebooks at zero (one code everywhere); the calibration spreads
    the codes of every level."""
    tok = toks(kind)
    clip = tok.prepare_audio(synth_audio("speechlike", seconds=2.0, sample_rate=16000, seed=9), 16000)
    codes = tok.audio.encode([clip])[0].codes
    per_level = [np.unique(codes[:, j]).size for j in range(codes.shape[1])]
    assert len(per_level) == tok.audio.n_q and min(per_level) >= 4, per_level


def test_determinism_across_processes(toks):
    """Another Python process builds the same token spaces and the same tokens for both kinds."""
    here = {kind: token_digest(toks(kind)) for kind in KINDS}
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_codec_xcodec import KINDS, config_text, load, token_digest\n"
        "print(json.dumps({k: token_digest(load(config_text(k))) for k in KINDS}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(pathlib.Path(__file__).parent)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


# ---- weights: local folders --------------------------------------------------------------------------
def folder_line(kind: str, folder: pathlib.Path) -> str:
    return AUDIO[kind].replace("arch: small", f"weights: {json.dumps(str(folder))}")


@pytest.mark.parametrize("kind", KINDS)
def test_local_folder_loads_the_same_weights_and_tokens(toks, kind, tmp_path):
    tok = toks(kind)
    folder = tmp_path / "model"
    tok.audio._net.save_pretrained(folder, safe_serialization=True)
    loaded = load("text: {kind: byte}\n" + folder_line(kind, folder) + "\n")
    assert loaded.audio.fingerprint == tok.audio.fingerprint and loaded.space.codecs["audio"].weights == "pretrained"
    assert loaded.space.codecs["audio"].params == tok.space.codecs["audio"].params
    assert token_digest(loaded)["tokens"] == token_digest(tok)["tokens"]
    if kind == "xcodec":  # a named model must match the folder's semantic model
        with pytest.raises(ConfigError, match="'wavlm-mls' has a wavlm semantic model, but .* one with hubert"):
            load("text: {kind: byte}\n" + folder_line(kind, folder).replace("}", ", model: wavlm-mls}") + "\n")
    with pytest.raises(ConfigError, match="arch: applies to random weights"):
        load("text: {kind: byte}\n" + folder_line(kind, folder).replace("}", ", arch: small}") + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "DacFeatureExtractor",
                                                                  "hop_length": 512, "sampling_rate": 44100}))
    with pytest.raises(WeightsError, match=r"preprocessor_config.json sets .*'hop_length': 512"):
        load("text: {kind: byte}\n" + folder_line(kind, folder) + "\n")


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_of_another_architecture_is_refused_naming_it(toks, kind, tmp_path):
    """The folder's config.json is the small model's, its weights another size's (64 -> 32 codes): the
    loader names the folder and the mismatch. A folder of the other kind is refused by its model type."""
    tok = toks(kind)
    folder, other = tmp_path / "mixed", tmp_path / "other"
    tok.audio._net.save_pretrained(folder, safe_serialization=True)
    config_cls, model_cls = type(tok.audio).model_classes()
    cfg = config_cls(**{**json.loads((folder / "config.json").read_text()), "codebook_size": 32,
                        "target_bandwidths": [0.5]})
    model_cls(cfg).save_pretrained(other, safe_serialization=True)
    (other / "model.safetensors").replace(folder / "model.safetensors")
    with pytest.raises(WeightsError, match=f"{folder}.*(size|shape|mismatch)"):
        load("text: {kind: byte}\n" + folder_line(kind, folder) + "\n")
    twin = "higgs_audio_v2" if kind == "xcodec" else "xcodec"
    toks(twin).audio._net.save_pretrained(tmp_path / "twin", safe_serialization=True)
    with pytest.raises(WeightsError, match=f"{tmp_path / 'twin'}/config.json is a '{toks(twin).audio.model_type}' model"):
        load("text: {kind: byte}\n" + folder_line(kind, tmp_path / "twin") + "\n")


# ---- batched encode ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_encode_batch_4_codes_do_not_depend_on_the_call(toks, kind):
    """Seven clips of mixed lengths (five in one bucket: two passes of 4, two in buckets of their own):
    one call equals each clip alone and the reversed call; every pass is (4, 1, bucket length)."""
    codec = toks(kind).audio
    hop = codec.hop_length
    lengths = [10 * hop, 3 * hop - 2, 10 * hop - hop // 2, 9 * hop - 7, 13 * hop - 5, 9 * hop, 10 * hop - 1]
    g = torch.Generator().manual_seed(7)
    clips = []
    for k, n in enumerate(lengths):
        t = torch.arange(n, dtype=torch.float32) / codec.sample_rate
        clips.append((0.3 * torch.sin(2 * np.pi * (180 + 70 * k) * t) + 0.05 * torch.randn(n, generator=g))[None])
    codec.set_encode_batch(BATCH)
    try:
        codec.pass_log.take()
        together, shapes = with_inputs(codec._net.acoustic_encoder, lambda: codec.encode(clips))
        plan = plan_passes(lengths, encode_batch=BATCH, bucket=lambda n: bucket_frames(-(-n // hop)) * hop)
        assert (len(plan), codec.pass_log.take().passes) == (4, 4)
        assert sorted(shapes) == sorted((BATCH, 1, p.length) for p in plan)
        alone = [codec.encode([c])[0] for c in clips]
        backwards = list(reversed(codec.encode(list(reversed(clips)))))
    finally:
        codec.set_encode_batch(1)
    for k, (a, b, c) in enumerate(zip(together, alone, backwards)):
        assert a.codes.shape == (-(-lengths[k] // hop), codec.n_q)
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.codes, c.codes), f"{kind} clip {k}"


# ---- variants ----------------------------------------------------------------------------------------
def test_variants_list_the_published_models_sizes(toks):
    from uti.codecs.higgs_audio_v2 import HiggsAudioV2AudioCodec
    from uti.codecs.xcodec import XcodecAudioCodec

    xcodec = {v.model: v.sizes for v in XcodecAudioCodec.variants()}
    assert set(xcodec) == {"hubert-librispeech", "hubert-general", "hubert-general-balanced", "wavlm-mls",
                           "wavlm-more-data"}
    for sizes in xcodec.values():
        assert sizes == {"sample_rate": 16000, "channels": 1, "frame_rate": 50.0, "codebook_size": 1024, "max_n_q": 8,
                         "layout": "frame_major", "n_q": {"0.5": 1, "1": 2, "1.5": 3, "2": 4, "4": 8}}
    (higgs,) = HiggsAudioV2AudioCodec.variants()
    assert higgs.model == "higgs_audio_v2" and higgs.sizes == {
        "sample_rate": 24000, "channels": 1, "frame_rate": 25.0, "codebook_size": 1024, "max_n_q": 8,
        "layout": "frame_major", "n_q": {"0.5": 2, "1": 4, "1.5": 6, "2": 8}}
    # the listing's bandwidth -> levels rule is the model's own (checked on the small models)
    for kind in KINDS:
        rvq = toks(kind).audio._net.quantizer
        for b in toks(kind).audio._net.config.target_bandwidths:
            assert rvq.get_num_quantizers_for_bandwidth(b) == load(config_text(kind, f"bandwidth: {b}")).audio.n_q


def test_config_mistakes_are_named():
    with pytest.raises(ConfigError, match=r"audio.model: 'hubert' is not one of hubert-general"):
        load("audio: {kind: xcodec, model: hubert, arch: small}")
    with pytest.raises(ConfigError, match="'pretrained' would download"):
        load("audio: {kind: higgs_audio_v2, weights: pretrained}")
    with pytest.raises(ConfigError, match=r"unknown HiggsAudioV2TokenizerConfig key\(s\) \['hop'\]"):
        load("audio: {kind: higgs_audio_v2, arch: {hop: 3}}")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_yaml("audio: {kind: xcodec, n_q: 3}")  # levels follow from bandwidth
