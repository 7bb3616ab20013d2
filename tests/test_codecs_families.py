"""The codec families beyond EnCodec/VQGAN: Mimi, DAC, X-codec2, SNAC, Emu3 and Janus VQ, each
on its `arch: small` architecture with fixed-seed weights, through the unified tokenizer and the
token space's layouts.

Per family: the token space is built with sizes read from the loaded model, encode/decode round trip
shapes, batch == single bit for bit, strict decode from meta, determinism across two processes, a
local Hugging Face folder loads to the same weights and tokens, and `uti audit --config` passes.
Models are built once per module (their random weights are cached by uti across processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cli_helpers import uti_in_process
from uti.assets import synth_audio, synth_image
from uti.config import config_from_yaml
from uti.errors import ConfigError, DecodeRefused, TokenSpaceError, WeightsError
from uti.token_space import LayoutSpec, TokenSpace, write_token_space
from uti.tokenizer import UnifiedTokenizer

AUDIO = {
    "mimi": "audio: {kind: mimi, arch: small, n_q: 4}",
    "dac": "audio: {kind: dac, model: 24khz, arch: small}",
    "xcodec2": "audio: {kind: xcodec2, arch: small}",
    "snac": "audio: {kind: snac, model: 44khz, arch: small}",
}
IMAGE = {
    "emu3": "image: {kind: emu3, arch: small}",
    "janus": "image: {kind: janus, arch: small}",
}
# What each small architecture must report (read from the loaded model, never from the config)
SIZES = {
    "mimi": dict(sample_rate=24000, channels=1, n_q=4, codebook_size=64, frame_rate=12.5, hop_length=1920),
    "dac": dict(sample_rate=24000, channels=1, n_q=4, codebook_size=64, frame_rate=75.0, hop_length=320),
    "xcodec2": dict(sample_rate=16000, channels=1, n_q=1, codebook_size=256, frame_rate=50.0, hop_length=320),
    "snac": dict(sample_rate=44100, channels=1, n_q=4, codebook_size=64, hop_length=3072, codes_per_frame=[1, 2, 4, 8]),
    "emu3": dict(proc_size=[32, 32], grid=[16, 16], codebook_size=256),
    "janus": dict(proc_size=[32, 32], grid=[16, 16], codebook_size=256),
}
LAYOUT = {"mimi": ("frame_major", 4), "dac": ("frame_major", 4), "xcodec2": ("fsq", 1), "snac": ("multirate", 15),
          "emu3": ("grid2d", 1), "janus": ("grid2d", 1)}
SECONDS = (0.05, 0.3, 0.3, 0.71)  # two clips of one length: the case a batching codec would merge


def config_text(kind: str) -> str:
    return "text: {kind: byte}\n" + (AUDIO.get(kind) or IMAGE[kind]) + "\n"


@pytest.fixture(scope="module")
def toks():
    built: dict[str, UnifiedTokenizer] = {}

    def get(kind: str) -> UnifiedTokenizer:
        if kind not in built:
            built[kind] = UnifiedTokenizer(config_from_yaml(config_text(kind)))
        return built[kind]

    return get


def clips_for(tok: UnifiedTokenizer) -> list[torch.Tensor]:
    sr = tok.audio.sample_rate
    return [tok.prepare_audio(synth_audio("speechlike", seconds=s, sample_rate=16000, seed=i), 16000)
            if i != 2 else tok.prepare_audio(synth_audio("chirp", seconds=s, sample_rate=16000, seed=i), 16000)
            for i, s in enumerate(SECONDS)] + [torch.zeros(1, 1) + 0.01, torch.zeros(1, sr // 3)]


def images_for(tok: UnifiedTokenizer) -> list[np.ndarray]:
    return [synth_image(size=tok.image.proc_size[0], seed=i) for i in range(3)]


def token_digest(tok: UnifiedTokenizer, kind: str) -> dict[str, str]:
    """Token-space ID and the SHA-256 of every sample's tokens: what another process must reproduce."""
    items = tok.encode_audios(clips_for(tok)) if kind in AUDIO else tok.encode_images(images_for(tok))
    return {"space": tok.space.id, "tokens": hashlib.sha256(b"".join(ids.astype("<u4").tobytes() for ids, _ in items)).hexdigest()}


# ---- token space and sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [*AUDIO, *IMAGE])
def test_token_space_is_built_from_the_sizes_the_model_reports(toks, kind, tmp_path):
    tok = toks(kind)
    modality = "audio" if kind in AUDIO else "image"
    codec = getattr(tok, modality)
    sizes = codec.runtime_sizes()
    assert {k: sizes[k] for k in SIZES[kind]} == SIZES[kind]
    desc = tok.space.codecs[modality]
    assert desc.kind == kind and desc.weights == "random:0" and len(desc.fingerprint) == 64
    assert desc.params["arch"] and all(desc.params[k] == v for k, v in sizes.items())  # the architecture is in the ID
    ranges = tok.space.audio_levels if modality == "audio" else [tok.space.range("image")]
    assert len(ranges) == (sizes["n_q"] if modality == "audio" else 1)
    assert all(r.size == sizes["codebook_size"] for r in ranges)
    layout = tok.space.layout(modality)
    assert (layout.kind, layout.tokens_per_frame) == LAYOUT[kind] and desc.layout.kind == LAYOUT[kind][0]
    write_token_space(tok.space, tmp_path)
    assert TokenSpace.load(tmp_path).id == tok.space.id and TokenSpace.load(tmp_path).version == 4


def test_tokenspace_build_cli_with_new_kinds(tmp_path):
    config = tmp_path / "uti.yaml"
    config.write_text("text: {kind: byte}\n" + AUDIO["snac"] + "\n" + IMAGE["janus"] + "\n")
    proc = uti_in_process("tokenspace", "build", "--config", str(config), "--out", str(tmp_path / "ts"))
    assert proc.returncode == 0, proc.stderr
    space = TokenSpace.load(tmp_path / "ts")
    assert space.codecs["audio"].kind == "snac" and space.layout("audio").kind == "multirate"
    shown = uti_in_process("tokenspace", "show", str(tmp_path / "ts"))
    assert "snac" in shown.stdout and "janus" in shown.stdout and "audio.l3" in shown.stdout


# ---- encode / decode --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(AUDIO))
def test_audio_round_trip_shapes_and_strict_decode_from_meta(toks, kind):
    tok = toks(kind)
    codec, layout = tok.audio, tok.space.layout("audio")
    for clip, (ids, meta) in zip(clips_for(tok), tok.encode_audios(clips_for(tok))):
        n = clip.shape[1]
        assert meta["n_samples"] == n and meta["n_frames"] == codec.expected_frames(n) and meta["n_q"] == codec.n_q
        assert ids.dtype == np.uint32 and ids.size == layout.expected_len(meta)
        assert layout.first_violation(ids) is None
        wav = tok.decode_audio(ids, meta)
        assert wav.shape[0] == 1 and n - codec.hop_length <= wav.shape[1] <= n and torch.isfinite(wav).all()
        assert torch.equal(tok.decode_audio(ids, meta), wav)  # decode is deterministic too (SNAC's noise is seeded)


@pytest.mark.parametrize("kind", list(IMAGE))
def test_image_round_trip_shapes_and_strict_decode_from_meta(toks, kind):
    tok = toks(kind)
    for ids, meta in tok.encode_images(images_for(tok)):
        assert ids.size == 16 * 16 and meta["grid"] == [16, 16] and meta["proc_size"] == [32, 32]
        out = tok.decode_image(ids, meta)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        with pytest.raises(DecodeRefused, match="grid"):
            tok.decode_image(ids[:-1], meta)


@pytest.mark.parametrize("kind", [*AUDIO, *IMAGE])
def test_batch_equals_single_bit_for_bit(toks, kind):
    tok = toks(kind)
    if kind in AUDIO:
        clips = clips_for(tok)
        batch, alone = tok.encode_audios(clips), [tok.encode_audio(c) for c in clips]
    else:
        images = images_for(tok)
        batch, alone = tok.encode_images(images), [tok.encode_image(im) for im in images]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(batch, alone))
    assert [m for _, m in batch] == [m for _, m in alone]


@pytest.mark.parametrize("kind", [*AUDIO, *IMAGE])
def test_random_codebooks_are_used(toks, kind):
    """Random weights give codes spread over the codebooks (not one code everywhere): the calibration of
    Mimi's zero codebooks and X-codec2's FSQ projection is what makes that true."""
    tok = toks(kind)
    if kind in AUDIO:
        clip = tok.prepare_audio(synth_audio("speechlike", seconds=2.0, sample_rate=16000, seed=9), 16000)
        codes = tok.audio.encode([clip])[0].codes
        per_level = [np.unique(codes[:, j]).size for j in range(codes.shape[1])]
    else:
        per_level = [np.unique(np.concatenate([c.ravel() for c in tok.image.encode(images_for(tok))])).size]
    assert min(per_level) >= 4, per_level


def test_determinism_across_processes(toks):
    """Another Python process builds the same token spaces and the same tokens for every family."""
    here = {kind: token_digest(toks(kind), kind) for kind in [*AUDIO, *IMAGE]}
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_codecs_families import AUDIO, IMAGE, config_text, token_digest\n"
        "from uti.config import config_from_yaml\n"
        "from uti.tokenizer import UnifiedTokenizer\n"
        "print(json.dumps({k: token_digest(UnifiedTokenizer(config_from_yaml(config_text(k))), k) for k in [*AUDIO, *IMAGE]}))\n"
    )
    import pathlib

    proc = subprocess.run([sys.executable, "-c", script, str(pathlib.Path(__file__).parent)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


# ---- the layouts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [*AUDIO, "encodec"])
def test_frames_follow_from_the_token_space_alone(toks, kind, default_tokenizer):
    """verify and generate check n_frames against n_samples without loading the codec: the rule the
    token space records gives what the model gives (Mimi: its own get_encoded_length)."""
    from uti.token_space import expected_audio_frames

    tok = default_tokenizer if kind == "encodec" else toks(kind)
    params = tok.space.codecs["audio"].params
    lengths = [1, 2, 319, 320, 321, 1919, 1920, 1921, 3071, 3072, 3073, 12287, 12288, 12289, 24000, 44101]
    assert [expected_audio_frames(params, n) for n in lengths] == [tok.audio.expected_frames(n) for n in lengths]
    if kind == "mimi":
        assert [tok.audio.expected_frames(n) for n in lengths] == \
            tok.audio._net.get_encoded_length(torch.tensor(lengths)).tolist()



def test_snac_layout_groups_levels_per_coarsest_frame(toks):
    tok = toks("snac")
    layout = tok.space.layout("audio")
    names = [layout.range_of_position(i).name for i in range(16)]
    assert names == ["audio.l0"] + ["audio.l1"] * 2 + ["audio.l2"] * 4 + ["audio.l3"] * 8 + ["audio.l0"]
    assert layout.codes_per_frame == (1, 2, 4, 8) and layout.is_frame_start(15) and not layout.is_frame_start(7)
    with pytest.raises(IndexError):
        layout.range_of_position(30, n_frames=2)
    # the codec's native per-level codes, in the layout's order: level k's codes of frame f are
    # positions f*15 + offset_k .. of the sequence
    clip = tok.prepare_audio(synth_audio("speechlike", seconds=0.5, sample_rate=16000, seed=3), 16000)
    levels = tok.audio._net.encode(clip[None])
    ids, meta = tok.encode_audio(clip)
    grid = ids.reshape(meta["n_frames"], 15).astype(np.int64)
    offsets = [0, 1, 3, 7]
    for k, per in enumerate((1, 2, 4, 8)):
        start = tok.space.range(f"audio.l{k}").start
        assert np.array_equal((grid[:, offsets[k]: offsets[k] + per] - start).reshape(-1), levels[k][0].numpy())
    assert all(np.array_equal(a, b[0].numpy()) for a, b in zip(layout.level_codes(ids), levels))


def test_strict_decoder_refuses_tokens_against_the_layout(toks):
    tok = toks("snac")
    ids, meta = tok.encode_audio(tok.prepare_audio(synth_audio("speechlike", seconds=0.5, sample_rate=16000, seed=1), 16000))
    space = tok.space
    wrong = ids.copy()
    wrong[3] = space.range("audio.l1").start  # a level-1 code where level 2 belongs (position 3 of 15)
    with pytest.raises(DecodeRefused, match=r"frame 0 level 2 \(position 3 of 15\).*audio.l2.*it is in audio.l1"):
        tok.decode_audio(wrong, meta)
    with pytest.raises(DecodeRefused, match=r"n_frames\*tokens_per_frame"):
        tok.decode_audio(ids[:-7], meta)  # frames of 15: half a frame short
    with pytest.raises(DecodeRefused, match="n_frames"):
        tok.decode_audio(ids[:-15], {**meta, "n_frames": meta["n_frames"] - 1})  # meta disagrees with n_samples


def test_version_2_spaces_load_and_cannot_hold_a_multirate_layout(toks, tmp_path, default_tokenizer):
    """Version-2 token spaces (written before layouts were recorded) still load and compare with the
    loaded codecs by their own recipe; a layout version 2 cannot express is refused, not dropped."""
    v2 = TokenSpace.build(**{m: (c.descriptor(2) if c else None) for m, c in default_tokenizer._codecs(all_=True).items()},
                          num_reserved=default_tokenizer.config.num_reserved_specials, version=2)
    assert "level_order" in v2.to_dict() and "layout" not in v2.to_dict()["codecs"]["audio"]
    write_token_space(v2, tmp_path / "v2")
    loaded = TokenSpace.load(tmp_path / "v2")
    assert loaded.version == 2 and loaded.layout("audio").kind == "frame_major" and loaded.layout("image").kind == "grid2d"
    again = UnifiedTokenizer(default_tokenizer.config, token_space=loaded)
    assert again.space.id == loaded.id != default_tokenizer.space.id
    with pytest.raises(TokenSpaceError, match="version 2 cannot record"):
        toks("snac").audio.descriptor(2)
    bad = json.loads(toks("snac").space.canonical_json())
    bad["codecs"]["audio"]["layout"]["pattern"] = [0, 1, 2, 3]  # multirate with one code per level
    with pytest.raises(TokenSpaceError, match="multirate"):
        TokenSpace.from_dict(bad)
    assert LayoutSpec.multirate([1, 2, 4]).pattern == (0, 1, 1, 2, 2, 2, 2)


# ---- weights: local folders, config mistakes -------------------------------------------------------------
def _save_hf(codec, folder) -> None:
    codec._net.save_pretrained(folder, safe_serialization=True)


@pytest.mark.parametrize("kind", ["mimi", "dac", "xcodec2", "emu3", "janus"])
def test_local_hugging_face_folder_loads_the_same_weights(toks, kind, tmp_path):
    tok = toks(kind)
    modality = "audio" if kind in AUDIO else "image"
    codec = getattr(tok, modality)
    _save_hf(codec, tmp_path / "model")
    line = (AUDIO.get(kind) or IMAGE[kind]).replace("arch: small", f"weights: {json.dumps(str(tmp_path / 'model'))}")
    if kind == "emu3":  # a folder's default is the real model's 512 px; this small one was built for 32
        line = line.replace("}", ", proc_size: 32}")
    loaded = UnifiedTokenizer(config_from_yaml("text: {kind: byte}\n" + line + "\n"))
    other = getattr(loaded, modality)
    assert other.fingerprint == codec.fingerprint and loaded.space.codecs[modality].weights == "pretrained"
    assert loaded.space.codecs[modality].params == tok.space.codecs[modality].params
    a, b = (token_digest(t, kind)["tokens"] for t in (tok, loaded))
    assert a == b
    # arch with a folder, a pickle-only folder, a folder of another model: each a clear error
    with pytest.raises(ConfigError, match="arch: applies to random weights"):
        config_and_load(line.replace("}", ", arch: small}"))
    (tmp_path / "model" / "model.safetensors").rename(tmp_path / "model" / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="safetensors only"):
        config_and_load(line)


def test_a_folder_missing_a_weight_is_refused_naming_it(toks, tmp_path):
    from safetensors.torch import load_file, save_file

    _save_hf(toks("dac").audio, tmp_path / "dac")
    state = load_file(str(tmp_path / "dac" / "model.safetensors"))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(tmp_path / "dac" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=f"missing_keys: .*{dropped}"):
        config_and_load(f"audio: {{kind: dac, weights: {json.dumps(str(tmp_path / 'dac'))}}}")


def test_loading_a_folder_prints_no_progress_bar(toks, tmp_path):
    """transformers draws a "Loading weights" bar on the process's real stderr (fd 2) for every model it
    loads; uti's loader turns it off while it loads (in the driver and in every codec actor alike) and back
    on afterwards: a direct from_pretrained in the same process still draws it, so the capture can see one."""
    _save_hf(toks("mimi").audio, tmp_path / "mimi")
    script = (
        "import sys\n"
        "from uti.config import config_from_yaml\n"
        "from uti.tokenizer import UnifiedTokenizer\n"
        "UnifiedTokenizer(config_from_yaml('text: {kind: byte}\\naudio: {kind: mimi, n_q: 4, weights: ' + sys.argv[1] + '}'))\n"
        "sys.stderr.write('<uti loaded>')\n"
        "sys.stderr.flush()\n"
        "from transformers import MimiModel\n"
        "MimiModel.from_pretrained(sys.argv[1], local_files_only=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "mimi")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_uti, after = proc.stderr.split("<uti loaded>")
    assert "Loading weights" not in by_uti, by_uti[-2000:]
    assert "Loading weights" in after, after[-2000:]  # the bars are the library's again after uti's load


def config_and_load(line: str) -> UnifiedTokenizer:
    return UnifiedTokenizer(config_from_yaml("text: {kind: byte}\n" + line + "\n"))


def test_snac_folder_with_safetensors_or_official_bin(toks, tmp_path):
    from safetensors.torch import save_file

    from uti.codecs.snac_audio import VARIANTS

    codec = toks("snac").audio
    folder = tmp_path / "snac_44khz"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**VARIANTS["44khz"], **{"encoder_dim": 8, "decoder_dim": 64,
                                                                           "codebook_size": 64, "codebook_dim": 8}}))
    state = {k: v.contiguous() for k, v in codec._net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    loaded = config_and_load(f"audio: {{kind: snac, weights: {json.dumps(str(folder))}}}")
    assert loaded.audio.fingerprint == codec.fingerprint
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # the official file format, read weights-only
    assert config_and_load(f"audio: {{kind: snac, model: 44khz, weights: {json.dumps(str(folder))}}}").audio.fingerprint \
        == codec.fingerprint
    with pytest.raises(ConfigError, match="24khz.*44100 Hz SNAC"):
        config_and_load(f"audio: {{kind: snac, model: 24khz, weights: {json.dumps(str(folder))}}}")


def test_config_mistakes_are_named():
    with pytest.raises(ConfigError, match=r"audio.n_q: 9 is outside 1..8"):
        config_and_load("audio: {kind: mimi, arch: small, n_q: 9}")
    with pytest.raises(ConfigError, match=r"audio.arch: unknown MimiConfig key\(s\) \['hiden_size'\]"):
        config_and_load("audio: {kind: mimi, arch: {hiden_size: 64}}")
    with pytest.raises(ConfigError, match="arch: 'tiny' is not 'small'"):
        config_and_load("audio: {kind: dac, arch: tiny}")
    with pytest.raises(ConfigError, match=r"audio.model: '48khz' is not one of 16khz, 24khz, 44khz"):
        config_and_load("audio: {kind: dac, model: 48khz}")
    with pytest.raises(ConfigError, match="'pretrained' would download"):
        config_and_load("audio: {kind: mimi, weights: pretrained}")
    with pytest.raises(ConfigError, match="image.proc_size: 64, but this Janus model decodes 16x16 codes to 32 px"):
        config_and_load("image: {kind: janus, arch: small, proc_size: 64}")
    with pytest.raises(ConfigError, match="'mimi' is an audio codec, not an image one"):
        config_from_yaml("image: {kind: mimi}")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_yaml("audio: {kind: snac, n_q: 3}")  # SNAC's levels are fixed by the model


# ---- the audit bundle ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_assets(tmp_path_factory):
    import soundfile as sf
    from PIL import Image

    folder = tmp_path_factory.mktemp("assets")
    sf.write(str(folder / "speech.wav"), synth_audio("speechlike", seconds=0.6, sample_rate=16000, seed=4), 16000)
    Image.fromarray(synth_image(size=64, seed=5)).save(folder / "scene.png")
    return folder


@pytest.mark.parametrize("kinds", [("mimi", "emu3"), ("snac", "janus"), ("dac",), ("xcodec2",)])
def test_audit_passes_for_every_codec_with_a_decoder(kinds, tmp_path, small_assets):
    from uti.audit import run_audit

    config = tmp_path / "uti.yaml"
    config.write_text("text: {kind: byte}\n" + "".join((AUDIO.get(k) or IMAGE[k]) + "\n" for k in kinds))
    result = run_audit(out=tmp_path / "bundle", config=str(config), assets=small_assets)
    failed = {c.name: c.detail for c in result.checks if c.hard and not c.ok}
    assert result.passed, failed
    checks = {c.name for c in result.checks}
    assert {"batch_equals_single.audio", "decode.audio", "config_size_match"} <= checks
    assert ("decode.image" in checks) == (len(kinds) == 2)
    assert json.loads((tmp_path / "bundle" / "report.json").read_text())["passed"] is True
