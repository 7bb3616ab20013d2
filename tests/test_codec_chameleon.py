"""Chameleon's image VQ (`kind: chameleon`, transformers.ChameleonVQVAE) on its `arch: small` architecture
with fixed-seed weights, through the unified tokenizer: sizes read from the loaded model, the grid2d layout,
strict decode, determinism across processes, the model's own quantizer indices, fixed-shape batches, both
local-folder layouts (a standalone ChameleonVQVAE and a full Chameleon checkpoint) and a decoder file.
The small model is built once per module (uti caches its random weights across processes).
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

from uti.assets import synth_image
from uti.codecs.chameleon import ChameleonImageCodec, ChameleonSettings
from uti.codecs.hf_common import from_uint8_images
from uti.config import config_from_yaml
from uti.errors import ConfigError, DecodeRefused, DecodeUnavailable, WeightsError
from uti.tokenizer import UnifiedTokenizer

SECTION = "image: {kind: chameleon, arch: small}"
CONFIG = "text: {kind: byte}\n" + SECTION + "\n"


@pytest.fixture(scope="module")
def tok() -> UnifiedTokenizer:
    return UnifiedTokenizer(config_from_yaml(CONFIG))


def images(n: int = 3, size: int = 32) -> list[np.ndarray]:
    return [synth_image(size=size, seed=i) for i in range(n)]


def token_digest(tok: UnifiedTokenizer) -> dict[str, str]:
    """Token-space ID and the SHA-256 of every image's tokens: what another process must reproduce."""
    items = tok.encode_images(images())
    tokens = hashlib.sha256(b"".join(ids.astype("<u4").tobytes() for ids, _ in items)).hexdigest()
    return {"space": tok.space.id, "tokens": tokens}


def load(line: str) -> UnifiedTokenizer:
    return UnifiedTokenizer(config_from_yaml("text: {kind: byte}\n" + line + "\n"))


def folder_line(folder: Path, extra: str = "") -> str:
    return f"image: {{kind: chameleon, weights: {json.dumps(str(folder))}{extra}}}"


# ---- sizes, layout, variants ----------------------------------------------------------------------------
def test_token_space_holds_the_sizes_the_loaded_model_reports(tok):
    codec, net = tok.image, tok.image._net
    with torch.inference_mode():  # the grid as the encoder itself gives it, not from the config
        latent = net.quant_conv(net.encoder(torch.zeros(1, 3, net.config.resolution, net.config.resolution)))
    assert codec.proc_size == (net.config.resolution,) * 2 == (32, 32)
    assert codec.grid == tuple(latent.shape[2:]) == (16, 16)
    assert codec.codebook_size == net.quantize.embedding.weight.shape[0] == 256
    desc = tok.space.codecs["image"]
    assert desc.kind == "chameleon" and desc.weights == "random:0" and len(desc.fingerprint) == 64
    assert (desc.params["grid"], desc.params["proc_size"], desc.params["codebook_size"]) == ([16, 16], [32, 32], 256)
    assert desc.params["arch"]["num_embeddings"] == 256 and "0.0078" in desc.params["preprocessing_note"]
    assert tok.space.range("image").size == 256
    layout = tok.space.layout("image")
    assert layout.kind == "grid2d" and desc.layout.kind == "grid2d"


def test_variants_list_the_real_sizes():
    from uti.codecs.registry import installed_codecs

    (variant,) = ChameleonImageCodec.variants()
    assert variant.model == "chameleon"
    assert variant.sizes == {"proc_size": [512, 512], "grid": [32, 32], "codebook_size": 8192, "layout": "grid2d"}
    listed = {c.kind: c for c in installed_codecs()}
    assert not listed["chameleon"].error and listed["chameleon"].variants == [variant]


# ---- encode / decode ------------------------------------------------------------------------------------
def test_round_trip_shapes_and_strict_decode(tok):
    codec = tok.image
    for ids, meta in tok.encode_images(images()):
        assert ids.size == 16 * 16 and meta["grid"] == [16, 16] and meta["proc_size"] == [32, 32]
        out = tok.decode_image(ids, meta)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        assert np.array_equal(tok.decode_image(ids, meta), out)
        with pytest.raises(DecodeRefused, match="grid"):
            tok.decode_image(ids[:-1], meta)
    codes = codec.encode(images(1))[0]
    with pytest.raises(DecodeRefused, match=r"grid shape \(16, 16\)"):
        codec.decode(codes.reshape(8, 32))
    for bad in (256, -1):
        wrong = codes.copy()
        wrong[3, 5] = bad
        with pytest.raises(DecodeRefused, match=r"outside \[0, 256\)"):
            codec.decode(wrong)


def test_determinism_across_processes(tok):
    here = token_digest(tok)
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_codec_chameleon import CONFIG, token_digest\n"
        "from uti.config import config_from_yaml\n"
        "from uti.tokenizer import UnifiedTokenizer\n"
        "print(json.dumps(token_digest(UnifiedTokenizer(config_from_yaml(CONFIG)))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == here


def test_random_codebook_is_used(tok):
    """The calibrated codebook spreads random-weight codes (an uncalibrated one gives a handful)."""
    codes = np.concatenate([c.ravel() for c in tok.image.encode(images(4))])
    assert np.unique(codes).size >= 32, np.unique(codes).size
    book = tok.image._book()
    assert torch.unique(book, dim=0).shape[0] == book.shape[0]  # no two entries alike


def test_pixels_are_chameleons_own_and_codes_its_quantizers(tok):
    """What the encoder sees is bit for bit what Chameleon's image tokenizer feeds it (uint8 / 255 * 2 - 1
    in float64, then float32), and the float64 nearest search gives ChameleonVQVAE.encode's own indices."""
    codec = tok.image
    batch = np.stack(images(4))
    ours = ChameleonImageCodec.pixels(from_uint8_images(batch, torch.device("cpu")))
    reference = torch.from_numpy(batch / 255.0 * 2 - 1).permute(0, 3, 1, 2).float()
    assert torch.equal(ours, reference)
    codes = codec.encode(list(batch))
    with torch.inference_mode():
        model = [codec._net.encode(reference[i: i + 1]).image_tokens.reshape(16, 16).numpy() for i in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(codes, model))


def test_fixed_shape_passes_at_encode_batch_4(tok):
    """Six images at encode_batch 4 (a full pass and one filled with dummies): one call equals each image
    alone and the reversed call, bit for bit."""
    codec = tok.image
    ims = images(6)
    codec.set_encode_batch(4)
    try:
        codec.pass_log.take()
        together = codec.encode(ims)
        log = codec.pass_log.take()
        alone = [codec.encode([im])[0] for im in ims]
        backwards = codec.encode(ims[::-1])[::-1]
    finally:
        codec.set_encode_batch(1)
    assert (log.passes, log.items, log.dummies) == (2, 6, 2)  # every pass 4 images: the last one 2 + 2 dummies
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(together, alone, backwards))


# ---- weights: local folders, a decoder file ----------------------------------------------------------------
def test_standalone_folder_loads_the_same_weights_and_a_wrong_one_is_named(tok, tmp_path):
    codec = tok.image
    folder = tmp_path / "vq"
    codec._net.save_pretrained(folder, safe_serialization=True)
    loaded = load(folder_line(folder))
    assert loaded.image.fingerprint == codec.fingerprint and loaded.space.codecs["image"].weights == "pretrained"
    assert loaded.space.codecs["image"].params == tok.space.codecs["image"].params
    assert token_digest(loaded)["tokens"] == token_digest(tok)["tokens"]
    ids, meta = loaded.encode_image(images(1)[0])
    with pytest.raises(DecodeUnavailable, match="decoder"):  # a folder brings no decoder
        loaded.decode_image(ids, meta)
    with pytest.raises(ConfigError, match="arch: applies to random weights"):
        load(folder_line(folder, ", arch: small"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_embeddings": 512}))
    with pytest.raises(WeightsError, match="quantize.embedding.weight"):
        load(folder_line(folder))
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "emu3_vqgan"}))
    with pytest.raises(WeightsError, match="'emu3_vqgan' model.*'chameleon_vqgan'.*'chameleon'"):
        load(folder_line(folder))


def _full_chameleon_folder(codec: ChameleonImageCodec, folder: Path) -> None:
    """A tiny ChameleonForConditionalGeneration (the real class, so the real key names) holding our VQ."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    cfg = ChameleonConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, vocabulary_map={"<image>": 3},
                          vq_config=codec._net.config.to_dict())
    full = ChameleonForConditionalGeneration(cfg)
    full.model.vqmodel.load_state_dict(codec._net.state_dict())
    full.save_pretrained(folder, safe_serialization=True)


def test_full_chameleon_folder_reads_only_the_vq(tok, tmp_path):
    from safetensors.torch import load_file, save_file

    codec = tok.image
    folder = tmp_path / "chameleon"
    _full_chameleon_folder(codec, folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "chameleon"
    loaded = load(folder_line(folder))
    assert loaded.image.fingerprint == codec.fingerprint
    assert loaded.space.codecs["image"].params["arch"] == tok.space.codecs["image"].params["arch"]
    assert token_digest(loaded)["tokens"] == token_digest(tok)["tokens"]
    state = load_file(str(folder / "model.safetensors"))
    assert any(not k.startswith("model.vqmodel.") for k in state)  # the LM's tensors are there, and ignored
    del state["model.vqmodel.quant_conv.weight"]
    state["model.vqmodel.encoder.extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"missing_keys: \['model.vqmodel.quant_conv.weight'\].*"
                                           r"unexpected_keys: \['model.vqmodel.encoder.extra.weight'\]"):
        load(folder_line(folder))
    save_file({k: v for k, v in state.items() if "vqmodel" not in k}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"no tensor named model.vqmodel.\*"):
        load(folder_line(folder))


def test_a_decoder_file_decodes_as_the_random_decoder(tok, tmp_path):
    """The original VQGAN's layout (decoder.* and quantize.* in one file) loads into the decoder; a file
    of another codebook or with a tensor missing is refused by name."""
    from safetensors.torch import save_file

    codec = tok.image
    folder = tmp_path / "vq"
    codec._net.save_pretrained(folder, safe_serialization=True)
    decoder = {f"decoder.{k}": v.contiguous() for k, v in codec._decoder.state_dict().items()}
    book = {"quantize.embedding.weight": codec._book().detach().clone()}
    save_file({**decoder, **book}, str(tmp_path / "dec.safetensors"))
    loaded = load(folder_line(folder, f", decoder: {json.dumps(str(tmp_path / 'dec.safetensors'))}"))
    assert loaded.image.decode_info()["decoder_fingerprint"] == codec.decode_info()["decoder_fingerprint"]
    assert loaded.image.decode_info()["decoder"] == "pretrained"
    codes = codec.encode(images(1))[0]
    assert np.array_equal(loaded.image.decode(codes), codec.decode(codes))
    other = {**decoder, "quantize.embedding.weight": book["quantize.embedding.weight"] + 1}
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="another VQGAN"):
        load(folder_line(folder, f", decoder: {json.dumps(str(tmp_path / 'other.safetensors'))}"))
    dropped = sorted(decoder)[0]
    save_file({k: v for k, v in decoder.items() if k != dropped}, str(tmp_path / "short.safetensors"))
    with pytest.raises(WeightsError, match=f"missing_keys: \\['{dropped}'\\]"):
        load(folder_line(folder, f", decoder: {json.dumps(str(tmp_path / 'short.safetensors'))}"))


def test_config_mistakes_are_named():
    with pytest.raises(ConfigError, match=r"image.proc_size: 33 is not a multiple of 2"):
        load("image: {kind: chameleon, arch: small, proc_size: 33}")
    with pytest.raises(ConfigError, match=r"unknown ChameleonVQVAEConfig key\(s\) \['num_codes'\]"):
        load("image: {kind: chameleon, arch: {num_codes: 64}}")
    with pytest.raises(ConfigError, match="'pretrained' would download"):
        load("image: {kind: chameleon, weights: pretrained}")
    with pytest.raises(ConfigError, match="image.model: 'chameleon-30b' is not one of chameleon"):
        load("image: {kind: chameleon, model: chameleon-30b, arch: small}")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_yaml("image: {kind: chameleon, n_q: 2}")
    assert ChameleonSettings(arch="small").decoder is None


def test_audit_of_a_folder_without_decoder_audits_encode_and_skips_decode(tok, tmp_path):
    """A released Chameleon folder has no decoder: `uti audit` still checks encode (determinism, batch ==
    single, ranges, shapes) and reports decode as skipped with the reason, never as a crash or a pass."""
    from PIL import Image

    from uti.audit import run_audit

    folder = tmp_path / "vq"
    tok.image._net.save_pretrained(folder, safe_serialization=True)
    assets = tmp_path / "assets"
    assets.mkdir()
    Image.fromarray(synth_image(size=64, seed=5)).save(assets / "scene.png")
    config = tmp_path / "uti.yaml"
    config.write_text("text: {kind: byte}\n" + folder_line(folder) + "\n")
    result = run_audit(out=tmp_path / "bundle", config=str(config), assets=assets)
    checks = {c.name: c for c in result.checks}
    assert result.passed, {c.name: c.detail for c in result.checks if c.hard and not c.ok}
    assert {"determinism.image", "batch_equals_single.image", "ranges.image", "shape.image"} <= set(checks)
    decode = checks["decode.image"]
    assert not decode.hard and decode.detail.startswith("skipped") and "decoder" in decode.detail
    assert not (tmp_path / "bundle" / "recon.png").exists()
