"""The SEED image tokenizer: official checkpoint key names, sizes recorded in the token space,
the causal1d layout, determinism, batch == single, strict decode and the unCLIP decode path.

Everything runs on `arch: small` (a small ViT + Q-Former, 32 queries, 256 codes, 56 px) with random
weights; the decoder is the tiny random unCLIP pipeline (`decoder: random:SEED`, 2 steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from uti.codecs.seed import SeedImageCodec, SeedSettings
from uti.errors import DecodeRefused, DecodeUnavailable, WeightsError

SMALL = dict(arch="small", decode_steps=2)
CONFIG = ("text: {kind: byte}\n"
          "image: {kind: seed, weights: 'random:0', arch: small, decoder: 'random:0', decode_steps: 2}\n")


def official_keys(*, vit_depth: int, qformer_layers: int, cross_every: int, decode_depth: int) -> list[str]:
    """The state-dict key names of SEED's Blip2QformerQuantizer checkpoint (seed_quantizer.pt), spelled out
    from the official module names (EVA ViT blocks with q/v biases, the LAVIS Q-Former with *_query feed
    forward layers and no text embeddings, BLIP blocks for the image head)."""
    keys = ["visual_encoder.cls_token", "visual_encoder.pos_embed", "visual_encoder.patch_embed.proj.weight",
            "visual_encoder.patch_embed.proj.bias", "ln_vision.weight", "ln_vision.bias", "query_tokens",
            "Qformer.bert.embeddings.LayerNorm.weight", "Qformer.bert.embeddings.LayerNorm.bias",
            "quantize.embedding.weight", "pos_embed", "pos_embed_image", "distill_image_proj.weight",
            "distill_image_proj.bias", "image_down.0.weight", "image_down.2.weight", "image_down.4.weight"]
    for layer in ("encode_task_layer", "decode_task_layer"):
        keys += [f"{layer}.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    for i in range(vit_depth):
        b = f"visual_encoder.blocks.{i}."
        keys += [b + k for k in ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                                 "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                                 "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    for i in range(qformer_layers):
        b = f"Qformer.bert.encoder.layer.{i}."
        attn = ["attention"] + (["crossattention"] if i % cross_every == 0 else [])
        for a in attn:
            keys += [f"{b}{a}.self.{m}.{p}" for m in ("query", "key", "value") for p in ("weight", "bias")]
            keys += [f"{b}{a}.output.{m}.{p}" for m in ("dense", "LayerNorm") for p in ("weight", "bias")]
        keys += [f"{b}intermediate_query.dense.{p}" for p in ("weight", "bias")]
        keys += [f"{b}output_query.{m}.{p}" for m in ("dense", "LayerNorm") for p in ("weight", "bias")]
    for head in ("blocks", "blocks_image"):
        for i in range(decode_depth):
            keys += [f"{head}.{i}.{k}" for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                                  "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                                  "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    return sorted(keys)


SMALL_KEYS = dict(vit_depth=2, qformer_layers=2, cross_every=2, decode_depth=1)


@pytest.fixture(scope="module")
def codec():
    return SeedImageCodec(SeedSettings(**SMALL, decoder="random:0"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    out = [rng.integers(0, 256, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    yy, xx = np.mgrid[0:56, 0:56]
    out.append(np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from uti.config import config_from_yaml
    from uti.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(config_from_yaml(CONFIG))


def _official_checkpoint(codec: SeedImageCodec, path: Path, *, rename: tuple[str, str] | None = None) -> dict:
    """A seed_quantizer.pt-style file: the official key names with this model's tensors (+ the BERT
    position_ids buffer older checkpoints carry)."""
    state = {k: v.clone() for k, v in codec._net.state_dict().items()}
    assert sorted(state) == official_keys(**SMALL_KEYS)
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    if rename:
        state[rename[1]] = state.pop(rename[0])
    torch.save(state, path)
    return state


def test_module_names_are_the_official_checkpoint_keys(codec):
    assert sorted(codec._net.state_dict()) == official_keys(**SMALL_KEYS)


def test_official_checkpoint_loads_and_sizes_come_from_it(codec, tmp_path, images):
    path = tmp_path / "seed_quantizer.pt"
    _official_checkpoint(codec, path)
    loaded = SeedImageCodec(SeedSettings(weights=str(path)))
    # sizes read from the checkpoint's tensors, not from a config
    assert loaded.runtime_sizes() == {"proc_size": [56, 56], "n_tokens": 32, "codebook_size": 256}
    assert loaded._arch == codec._arch
    assert loaded.fingerprint == codec.fingerprint
    assert loaded.describe().weights == "pretrained"
    for a, b in zip(loaded.encode(images), codec.encode(images)):
        np.testing.assert_array_equal(a, b)


def test_missing_and_unknown_keys_are_listed(codec, tmp_path):
    path = tmp_path / "renamed.pt"
    _official_checkpoint(codec, path, rename=("quantize.embedding.weight", "quantize.embed.weight"))
    with pytest.raises(WeightsError) as err:
        SeedImageCodec(SeedSettings(weights=str(path)))
    msg = str(err.value)
    assert "missing keys (1): quantize.embedding.weight" in msg
    assert "unknown keys (1): quantize.embed.weight" in msg


def test_a_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "obj": Path("/etc")}, path)
    with pytest.raises(WeightsError, match="weights-only"):
        SeedImageCodec(SeedSettings(weights=str(path)))


def test_sizes_and_layout_in_the_token_space(tokenizer, codec):
    space = tokenizer.space
    image = space.codecs["image"]
    assert image.kind == "seed"
    assert image.params["n_tokens"] == 32 and image.params["codebook_size"] == 256
    assert image.params["proc_size"] == [56, 56] and "grid" not in image.params
    assert image.fingerprint == codec.fingerprint
    assert image.layout.to_dict() == {"kind": "causal1d", "pattern": [0]}
    assert space.range("image").size == 256
    layout = space.layout("image")
    assert layout.kind == "causal1d" and layout.n_tokens == 32
    assert layout.expected_len({"n_tokens": 32}) == 32 and layout.shape_meta() == {"n_tokens": 32}
    # the real architecture's sizes, as listed without loading weights
    (variant,) = SeedImageCodec.variants()
    assert variant.sizes == {"proc_size": [224, 224], "n_tokens": 32, "codebook_size": 8192, "layout": "causal1d"}


def test_causal1d_layout_needs_n_tokens(tokenizer):
    from uti.errors import TokenSpaceError
    from uti.token_space import TokenSpace

    data = tokenizer.space.to_dict()
    del data["codecs"]["image"]["params"]["n_tokens"]
    with pytest.raises(TokenSpaceError, match="n_tokens"):
        TokenSpace.from_dict(data)


def test_batch_equals_single_and_determinism(codec, images):
    batch = codec.encode(images)
    assert all(c.shape == (32,) and c.dtype == np.int64 for c in batch)
    for im, codes in zip(images, batch):
        np.testing.assert_array_equal(codec.encode([im])[0], codes)
    again = SeedImageCodec(SeedSettings(**SMALL)).encode(images)  # a second model from the same seed
    for a, b in zip(again, batch):
        np.testing.assert_array_equal(a, b)
    assert len({tuple(c) for c in batch}) == len(images)  # different images, different codes
    other = SeedImageCodec(SeedSettings(**SMALL, weights="random:1"))
    assert other.fingerprint != codec.fingerprint


def test_strict_decode(tokenizer, images):
    ids, meta = tokenizer.encode_image(images[0])
    assert meta["n_tokens"] == 32 and "grid" not in meta and ids.shape == (32,)
    img = tokenizer.decode_image(ids, meta)
    assert img.shape == (56, 56, 3) and img.dtype == np.uint8
    with pytest.raises(DecodeRefused, match="31 tokens"):
        tokenizer.decode_image(ids[:31], meta)
    with pytest.raises(DecodeRefused, match="n_tokens"):
        tokenizer.decode_image(ids, {**meta, "n_tokens": 16})
    bad_meta = {k: v for k, v in meta.items() if k != "n_tokens"}
    with pytest.raises(DecodeRefused, match="n_tokens"):
        tokenizer.decode_image(ids, {**bad_meta, "grid": [4, 8]})
    outside = ids.copy()
    outside[5] = tokenizer.space.range("text").start
    with pytest.raises(DecodeRefused, match="position 5"):
        tokenizer.decode_image(outside, meta)


def test_decode_without_decoder_is_refused_with_the_reason(images):
    plain = SeedImageCodec(SeedSettings(**SMALL))
    codes = plain.encode(images[:1])[0]
    with pytest.raises(DecodeUnavailable, match="decoder"):
        plain.decode(codes)


def test_decode_through_the_small_unclip_pipeline(codec, images):
    codes = codec.encode(images[:2])
    a, b = codec.decode(codes[0]), codec.decode(codes[0])
    assert a.shape == (56, 56, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # fixed seed and steps: the same pixels every time
    assert a.std() > 0
    emb0, emb1 = codec.image_embedding(codes[0]), codec.image_embedding(codes[1])
    assert emb0.shape == (1, 32) and not torch.equal(emb0, emb1)
    assert codec.decode_info() | {"decoder_fingerprint": ""} == {
        "decoder": "random:0", "decoder_fingerprint": "", "pipeline": "StableUnCLIPImg2ImgPipeline", "steps": 2,
        "guidance_scale": 10.0, "seed": 0, "noise_level": 0}
    with pytest.raises(DecodeRefused, match=r"\(32,\)"):
        codec.decode(codes[0][:16])


def test_random_decoder_is_refused_for_real_size_embeddings():
    from uti.codecs.seed import SMALL_ARCH
    from uti.errors import ConfigError

    # a small model that emits SD 2.1 unCLIP's 1024-dim embeddings: the tiny random pipeline is not for it
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in {**SMALL_ARCH, "image_features_dim": 1024}.items()}
    with pytest.raises(ConfigError, match="stable-diffusion-2-1-unclip"):
        SeedImageCodec(SeedSettings(arch=arch, decoder="random:0"))


def test_tokenspace_build_cli(tmp_path):
    from uti.cli import main

    cfg = tmp_path / "uti.yaml"
    cfg.write_text(CONFIG)
    assert main(["tokenspace", "build", "--config", str(cfg), "--out", str(tmp_path / "ts")]) == 0
    data = json.loads((tmp_path / "ts" / "token_space.json").read_text())
    image = data["codecs"]["image"]
    assert image["kind"] == "seed" and image["layout"] == {"kind": "causal1d", "pattern": [0]}
    assert image["params"]["n_tokens"] == 32


# ---- tokenize -> verify -> train -> generate on LLaVA-layout data, through the CLI -------------------------
from verify_helpers import ray_address  # noqa: E402,F401  (module fixture: one Ray instance)

N_IMAGES = 3


@pytest.fixture(scope="module")
def seed_out(tmp_path_factory, ray_address):
    """OUT of `uti tokenize` over a LLaVA-Pretrain layout (3 images + 1 truncated PNG) with kind seed."""
    from tokenize_helpers import make_llava
    from sharding.manifest import make_manifest
    from uti.cli import main

    base = tmp_path_factory.mktemp("seed_e2e")
    make_llava(base / "llava", n=N_IMAGES)
    make_manifest("llava", base / "llava", base / "llava.jsonl")
    (base / "uti.yaml").write_text(CONFIG)
    out = base / "out"
    assert main(["tokenize", "--manifest", str(base / "llava.jsonl"), "--out", str(out), "--config",
                 str(base / "uti.yaml"), "--address", ray_address, "--num-actors", "1", "--no-progress"]) == 0
    return out


def test_tokenize_writes_32_causal_tokens_per_image(seed_out):
    import io
    import tarfile

    from uti.token_space import TokenSpace

    space = TokenSpace.load(seed_out)
    assert space.codecs["image"].kind == "seed"
    errors = [json.loads(line) for line in (seed_out / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["llava:trunc"]
    (tar_path,) = sorted((seed_out / "shards").rglob("*.tar"))
    metas, tokens = [], []
    with tarfile.open(tar_path) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else b""
            if m.name.endswith(".tokens.npy"):
                tokens.append(np.load(io.BytesIO(data), allow_pickle=False))
            elif m.name.endswith(".json") and not m.name.startswith("__"):
                metas.append(json.loads(data))
    assert len(tokens) == N_IMAGES
    r = space.range("image")
    for t, meta in zip(tokens, metas):
        assert t.shape == (32,) and t.dtype == np.uint32 and ((t >= r.start) & (t < r.end)).all()
        assert meta["n_tokens"] == 32 and meta["proc_size"] == [56, 56] and "grid" not in meta


def test_verify_passes_with_decode_and_retokenize(seed_out, ray_address, tmp_path):
    from uti.cli import main

    report_dir = tmp_path / "verify"
    main(["verify", str(seed_out), "--address", ray_address, "--decode-fraction", "1", "--retokenize-fraction", "1",
          "--loader-batches", "0", "--report-dir", str(report_dir), "--no-plots"])
    report = json.loads((report_dir / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"], [(c["name"], c["first_failure"]) for c in report["checks"] if c["hard"] and not c["ok"]]
    assert checks["shapes"]["ok"] and checks["token_ranges"]["ok"]
    assert checks["decode"]["counts"].get("decode.image.ok") == N_IMAGES, checks["decode"]
    assert checks["retokenize"]["counts"].get("retokenize.image.exact") == N_IMAGES, checks["retokenize"]


def test_verify_without_a_decoder_skips_decode_with_the_reason(seed_out, ray_address, tmp_path):
    """The same data, tokenized by a config that names no unCLIP decoder: the tokens are fine, so verify
    passes and reports decode as skipped with the reason (not as failures); retokenize still runs."""
    import shutil

    from uti.cli import main

    out = tmp_path / "out"
    shutil.copytree(seed_out, out, ignore=shutil.ignore_patterns("verify"))
    job = json.loads((out / "job.json").read_text())
    assert job["config"]["image"].pop("decoder") == "random:0"
    (out / "job.json").write_text(json.dumps(job))
    report_dir = tmp_path / "verify"
    code = main(["verify", str(out), "--address", ray_address, "--decode-fraction", "1", "--retokenize-fraction",
                 "1", "--loader-batches", "0", "--report-dir", str(report_dir), "--no-plots"])
    report = json.loads((report_dir / "report.json").read_text())
    decode = next(c for c in report["checks"] if c["name"] == "decode")
    assert code == 0 and report["ok"], decode
    assert decode["status"] == "SKIP" and decode["failures"] == 0 and "no decoder configured" in decode["note"], decode
    assert decode["counts"].get("decode.image.unavailable") == N_IMAGES, decode


@pytest.mark.slow
def test_train_then_generate_an_image_of_32_causal_tokens(seed_out, tmp_path):
    """Two steps of the tiny LM, then `uti generate --mode image`: 32 constrained tokens, decoded through
    the small unCLIP pipeline to a PNG at proc_size."""
    from PIL import Image

    from uti.cli import main
    from uti.token_space import TokenSpace

    run = tmp_path / "run"
    # in this process (--num-workers 0): what is tested is the SEED tokens through the LM, not Ray
    assert main(["train", "--data", str(seed_out), "--out", str(run), "--model", "tiny", "--num-workers", "0",
                 "--steps", "2", "--seq-len", "128", "--batch-size", "2", "--seed", "0"]) == 0
    target = tmp_path / "gen.png"
    assert main(["generate", "--checkpoint", str(run), "--mode", "image", "--prompt", "a scene",
                 "--out", str(target)]) == 0
    sidecar = json.loads(Path(str(target) + ".json").read_text())
    tokens = np.asarray(sidecar["tokens"], dtype=np.int64)
    r = TokenSpace.load(seed_out).range("image")
    assert tokens.shape == (32,) and ((tokens >= r.start) & (tokens < r.end)).all()
    assert sidecar["meta"]["n_tokens"] == 32
    assert sidecar["decoder"]["steps"] == 2 and sidecar["decoder"]["seed"] == 0, sidecar.get("decoder")
    assert np.asarray(Image.open(target)).shape == (56, 56, 3)
