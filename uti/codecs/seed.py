"""SEED (the SEED-2 image tokenizer of SEED-LLaMA) as an image codec: 32 codes per image in causal order.

Architecture (learned from the public AILab-CVC/SEED code, implemented here from torch parts):
an EVA-CLIP ViT-g/14 at 224 px (`visual_encoder`, then `ln_vision`), a Q-Former of BERT-base size whose
32 learned queries attend to each other causally and, every `cross_attention_freq` layers, to the ViT
features (`Qformer.bert...`, `query_tokens`), a projection to 32-dim vectors (`encode_task_layer`) and
a codebook of 8192 entries (`quantize.embedding`), searched by euclidean distance. Decoding maps the
codes back (`decode_task_layer`, `pos_embed_image` + `blocks_image`, `image_down`, `distill_image_proj`)
to a 1024-dim unCLIP image embedding, which Stable Diffusion 2.1 unCLIP turns into pixels. `pos_embed`
+ `blocks` (the checkpoint's reconstruction head for training) are loaded and kept but never run.

Pixels: the uint8 image at `proc_size` (224: the ViT's size) / 255, normalized with CLIP's mean/std.
Note: SEED's own preprocessing squashes the whole image to 224x224; uti's image reader resizes the
short side (bicubic) and center-crops, so non-square images give other tokens than SEED's script.

Weights: `weights: /models/seed/seed_quantizer.pt` (the official checkpoint: a plain state dict, loaded
with weights_only=True; every key must be known and none may be missing) with optionally
`vit_weights:` (a separate EVA ViT-g state dict, when the checkpoint has no `visual_encoder.*` keys),
or `random:SEED` (the real architecture, or `arch: small` for tests and demos).

Decode: `decoder:` a local diffusers folder of `stabilityai/stable-diffusion-2-1-unclip`
(`StableUnCLIPImg2ImgPipeline` with `image_embeds` from the codes, noise_level 0, `decode_steps`
steps, `guidance_scale`, a fixed `decode_seed`), or `random:SEED` with `arch: small` (a tiny random
UNet/VAE built locally). With no decoder, decode raises DecodeUnavailable (decoders skip, not fail).
The decoder is not part of the token space (tokens do not depend on it); `decode_info()` says what
a decode used, for reports.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from uti.codecs.base import CodecVariant, ImageCodec
from uti.codecs.hf_common import (ATTENTION, SMALL, build_random, calibration_vectors, check_kind,
                                  encode_image_passes, fingerprint, nearest, seed_codebook)
from uti.codecs.weights import WeightsSpec, fingerprint_state_dict, parse_weights, resolve_device
from uti.config import ImageSettings
from uti.errors import ConfigError, DecodeRefused, DecodeUnavailable, WeightsError
from uti.quiet import no_loading_bars
from uti.token_space import BATCHING_IN_DESCRIPTOR_UNTIL, VERSION, CodecDescriptor, LayoutSpec

WHERE = "image"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Buffers some checkpoints carry that define nothing (BERT's position-id range); accepted and ignored.
IGNORED_KEYS = frozenset({"Qformer.bert.embeddings.position_ids"})
EVA_HEAD_DIM, BERT_HEAD_DIM = 88, 64  # head widths of EVA ViT-g and BERT: head counts follow from widths


@dataclass(frozen=True, kw_only=True)
class SeedArch:
    """The SEED tokenizer's sizes. Defaults: the released SEED-2 tokenizer."""

    img_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp: int = 6144
    qformer_width: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_mlp: int = 3072
    cross_attention_freq: int = 2
    n_query: int = 32
    codebook_size: int = 8192
    codebook_dim: int = 32
    decode_depth: int = 4
    decode_heads: int = 12
    down_dims: tuple[int, ...] = (256, 128, 32)
    image_features_dim: int = 1024  # SD 2.1 unCLIP's image embedding width

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values = v if isinstance(v, tuple) else (v,)
            if not values or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in values):
                raise ConfigError(f"{WHERE}.arch.{f.name}: must be positive integer(s), got {v!r}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"{WHERE}.arch: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, name in ((self.vit_width, self.vit_heads, "vit"), (self.qformer_width, self.qformer_heads, "qformer"),
                                   (self.qformer_width, self.decode_heads, "decode")):
            if width % heads:
                raise ConfigError(f"{WHERE}.arch: {name} width {width} is not a multiple of its {heads} heads")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# Head counts follow the real model's rule (width // head width, at least 1), so a checkpoint of this
# architecture loads with the same sizes (infer_arch).
SMALL_ARCH = dict(img_size=56, vit_width=32, vit_depth=2, vit_heads=1, vit_mlp=64, qformer_width=32, qformer_layers=2,
                  qformer_heads=1, qformer_mlp=64, codebook_size=256, codebook_dim=8, decode_depth=1, decode_heads=1,
                  down_dims=(16, 8, 4), image_features_dim=32)


@dataclass(kw_only=True, frozen=True)
class SeedSettings(ImageSettings):
    """`image: {kind: seed, weights: /models/seed/seed_quantizer.pt, decoder: /models/sd-2-1-unclip}`"""

    kind: str = "seed"
    weights: str = "random:0"  # "random:SEED" or the official seed_quantizer.pt
    vit_weights: str | None = None  # a separate EVA ViT-g state dict (keys without "visual_encoder.")
    arch: str | dict[str, Any] | None = None  # random weights only: "small" or SeedArch overrides
    decoder: str | None = None  # a local SD 2.1 unCLIP diffusers folder, "random:SEED" (arch small), or none
    decode_steps: int = 20  # SEED's own decode settings: 20 steps, guidance 10, noise_level 0
    guidance_scale: float = 10.0
    decode_seed: int = 0

    def __post_init__(self) -> None:
        check_kind(self, "seed")
        if self.decode_steps < 1:
            raise ConfigError(f"{WHERE}.decode_steps: must be >= 1, got {self.decode_steps}")


def arch_from_settings(arch: str | Mapping[str, Any] | None) -> SeedArch:
    if arch is None:
        return SeedArch()
    if isinstance(arch, str):
        if arch != SMALL:
            raise ConfigError(f"{WHERE}.arch: {arch!r} is not {SMALL!r} or a mapping of SeedArch overrides")
        return SeedArch(**SMALL_ARCH)
    known = {f.name for f in dataclasses.fields(SeedArch)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise ConfigError(f"{WHERE}.arch: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
    return SeedArch(**values)


# ---- the network -------------------------------------------------------------------------------------
def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool = False) -> torch.Tensor:
    """Multi-head scaled dot-product attention, written out (one code path on every device)."""
    b, n, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(n, k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _EvaAttention(nn.Module):
    """EVA's attention: one qkv matrix without bias, separate q and v biases (k has none)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = nn.functional.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        return self.proj(_attend(q, k, v, self.heads))


class _BlipAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(_attend(*self.qkv(x).chunk(3, dim=-1), self.heads))


class _Block(nn.Module):
    """Pre-norm transformer block (norm1, attn, norm2, mlp), as EVA's ViT and BLIP's blocks name them."""

    def __init__(self, dim: int, heads: int, mlp: int, attention: type):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = attention(dim, heads), _Mlp(dim, mlp)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class _EvaViT(nn.Module):
    def __init__(self, a: SeedArch):
        super().__init__()
        n = (a.img_size // a.patch_size) ** 2
        self.patch_embed = _PatchEmbed(a.patch_size, a.vit_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.vit_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, a.vit_width))
        self.blocks = nn.ModuleList(_Block(a.vit_width, a.vit_heads, a.vit_mlp, _EvaAttention) for _ in range(a.vit_depth))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x


class _BertAttention(nn.Module):
    """BERT's post-norm attention (`self.{query,key,value}`, `output.{dense,LayerNorm}`)."""

    class _Proj(nn.Module):
        def __init__(self, dim: int, kv_dim: int):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(kv_dim, dim), nn.Linear(kv_dim, dim)

    class _Out(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.dense, self.LayerNorm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-12)

    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.self = self._Proj(dim, kv_dim)
        self.output = self._Out(dim)

    def forward(self, x, context=None, causal=False):
        kv = x if context is None else context
        a = _attend(self.self.query(x), self.self.key(kv), self.self.value(kv), self.heads, causal=causal)
        return self.output.LayerNorm(self.output.dense(a) + x)


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int, norm: bool):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if norm:
            self.LayerNorm = nn.LayerNorm(n_out, eps=1e-12)


class _QFormerLayer(nn.Module):
    def __init__(self, a: SeedArch, cross: bool):
        super().__init__()
        self.attention = _BertAttention(a.qformer_width, a.qformer_width, a.qformer_heads)
        if cross:
            self.crossattention = _BertAttention(a.qformer_width, a.vit_width, a.qformer_heads)
        self.intermediate_query = _Dense(a.qformer_width, a.qformer_mlp, norm=False)
        self.output_query = _Dense(a.qformer_mlp, a.qformer_width, norm=True)

    def forward(self, q, image):
        q = self.attention(q, causal=True)  # SEED's queries see only earlier queries: a causal sequence
        if hasattr(self, "crossattention"):
            q = self.crossattention(q, context=image)
        h = self.output_query.dense(nn.functional.gelu(self.intermediate_query.dense(q)))
        return self.output_query.LayerNorm(h + q)


class _QFormer(nn.Module):
    """Holds `bert.embeddings.LayerNorm` and `bert.encoder.layer.N`, the checkpoint's `Qformer.` keys."""

    def __init__(self, a: SeedArch):
        super().__init__()
        self.bert = nn.Module()
        self.bert.embeddings = nn.Module()
        self.bert.embeddings.LayerNorm = nn.LayerNorm(a.qformer_width, eps=1e-12)
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(_QFormerLayer(a, cross=i % a.cross_attention_freq == 0)
                                                for i in range(a.qformer_layers))

    def forward(self, queries, image):
        q = self.bert.embeddings.LayerNorm(queries)
        for layer in self.bert.encoder.layer:
            q = layer(q, image)
        return q


class _Quantize(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)


class SeedTokenizerNet(nn.Module):
    """The SEED tokenizer with the official checkpoint's module names (so its state dict loads as is)."""

    def __init__(self, a: SeedArch):
        super().__init__()
        self.arch = a
        w = a.qformer_width
        self.visual_encoder = _EvaViT(a)
        self.ln_vision = nn.LayerNorm(a.vit_width)
        self.Qformer = _QFormer(a)
        self.query_tokens = nn.Parameter(torch.randn(1, a.n_query, w) * 0.02)
        self.quantize = _Quantize(a.codebook_size, a.codebook_dim)
        self.encode_task_layer = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, a.codebook_dim))
        self.decode_task_layer = nn.Sequential(nn.Linear(a.codebook_dim, a.codebook_dim), nn.Tanh(),
                                               nn.Linear(a.codebook_dim, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, a.n_query, w))  # training-only reconstruction head
        self.blocks = nn.ModuleList(_Block(w, a.decode_heads, 4 * w, _BlipAttention) for _ in range(a.decode_depth))
        self.pos_embed_image = nn.Parameter(torch.randn(1, a.n_query, w) * 0.02)
        self.blocks_image = nn.ModuleList(_Block(w, a.decode_heads, 4 * w, _BlipAttention) for _ in range(a.decode_depth))
        dims = (w, *a.down_dims)
        layers: list[nn.Module] = []
        for i in range(len(a.down_dims)):
            layers += [nn.Linear(dims[i], dims[i + 1], bias=False)] + ([nn.ReLU()] if i < len(a.down_dims) - 1 else [])
        self.image_down = nn.Sequential(*layers)
        self.distill_image_proj = nn.Linear(a.n_query * a.down_dims[-1], a.image_features_dim)

    def query_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) CLIP-normalized pixels -> (B, n_query, codebook_dim) quantizer inputs, in query
        order. Every step is per image along the batch axis (patch convolution, token-wise linears and
        layer norms, attention as batched matmuls with one causal mask for all images), so the whole
        pass, the causal Q-Former included, is batched; no part needs to run per item."""
        image = self.ln_vision(self.visual_encoder(pixels))
        q = self.Qformer(self.query_tokens.expand(pixels.shape[0], -1, -1), image)
        return self.encode_task_layer(q)

    def image_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """(n_query,) long codes -> (1, image_features_dim) unCLIP image embedding."""
        x = self.decode_task_layer(self.quantize.embedding(codes)[None]) + self.pos_embed_image
        for blk in self.blocks_image:
            x = blk(x)
        return self.distill_image_proj(self.image_down(x).reshape(1, -1))


# ---- loading the official checkpoint -----------------------------------------------------------------
def load_state(path: Path, *, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{what}: {path} is not a file; give the official seed_quantizer.pt (or random:SEED)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle with code, a corrupt file: one clear line
        raise WeightsError(f"{what}: cannot load {path} as a weights-only state dict ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); uti never unpickles code") from None
    if isinstance(state, Mapping) and set(state) == {"model"} and isinstance(state["model"], Mapping):
        state = state["model"]  # LAVIS-style {"model": state_dict}
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{what}: {path} is not a state dict of tensors")
    return dict(state)


def infer_arch(state: Mapping[str, torch.Tensor]) -> SeedArch:
    """The architecture a checkpoint describes, from its tensor shapes (head counts from head widths). A
    size whose tensor is absent keeps SEED's value, so that load_checkpoint then lists every missing and
    unknown key at once instead of stopping at the first."""
    default = SeedArch()

    def dim(key: str, axis: int, fallback: int) -> int:
        return int(state[key].shape[axis]) if key in state and state[key].dim() > axis else fallback

    def count(prefix: str, fallback: int) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}) or fallback

    patch_key = "visual_encoder.patch_embed.proj.weight"
    vit_width, patch = dim(patch_key, 0, default.vit_width), dim(patch_key, 2, default.patch_size)
    n_pos = dim("visual_encoder.pos_embed", 1, (default.img_size // default.patch_size) ** 2 + 1) - 1
    n_query, width = dim("query_tokens", 1, default.n_query), dim("query_tokens", 2, default.qformer_width)
    layers = count("Qformer.bert.encoder.layer.", default.qformer_layers)
    cross = sorted(int(k.split(".")[4]) for k in state
                   if k.startswith("Qformer.bert.encoder.layer.") and ".crossattention.self.query.weight" in k)
    down_keys = sorted((k for k in state if k.startswith("image_down.") and k.endswith(".weight")),
                       key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else 0)
    codebook_dim = dim("quantize.embedding.weight", 1, dim("encode_task_layer.2.weight", 0, default.codebook_dim))
    return SeedArch(
        img_size=int(round(math.sqrt(max(n_pos, 1)))) * patch, patch_size=patch, vit_width=vit_width,
        vit_depth=count("visual_encoder.blocks.", default.vit_depth), vit_heads=max(1, vit_width // EVA_HEAD_DIM),
        vit_mlp=dim("visual_encoder.blocks.0.mlp.fc1.weight", 0, default.vit_mlp), qformer_width=width,
        qformer_layers=layers, qformer_heads=max(1, width // BERT_HEAD_DIM),
        qformer_mlp=dim("Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 0, default.qformer_mlp),
        cross_attention_freq=cross[1] - cross[0] if len(cross) > 1 else (layers if cross else default.cross_attention_freq),
        n_query=n_query, codebook_size=dim("quantize.embedding.weight", 0, default.codebook_size),
        codebook_dim=codebook_dim, decode_depth=count("blocks_image.", default.decode_depth),
        decode_heads=max(1, width // BERT_HEAD_DIM),
        down_dims=tuple(int(state[k].shape[0]) for k in down_keys) or default.down_dims,
        image_features_dim=dim("distill_image_proj.weight", 0, default.image_features_dim))


def load_checkpoint(net: SeedTokenizerNet, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load exactly the official key set: a missing, unknown or wrongly shaped tensor is an error naming it."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected) - IGNORED_KEYS)
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                   for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                for label, keys in (("missing keys", missing), ("unknown keys", unknown), ("wrong shapes", wrong)) if keys]
    if problems:
        raise WeightsError(f"{WHERE}.weights: {source} is not a SEED tokenizer checkpoint this adapter can load: "
                           + "; ".join(problems) + ". Give SEED's seed_quantizer.pt unchanged (plus vit_weights: "
                           "the EVA ViT-g state dict when it has no visual_encoder.* keys)")
    net.load_state_dict({k: state[k].float() for k in expected})


# ---- the diffusion decoder ---------------------------------------------------------------------------
def tiny_unclip_pipeline(embed_dim: int, seed: int):
    """A small randomly initialised StableUnCLIPImg2ImgPipeline (no download): 32 px, for tests and demos."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline,
                           UNet2DConditionModel)
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32, class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * embed_dim)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                            layers_per_block=1, norm_num_groups=32, sample_size=32)
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
        # never run (image_embeds come from the codes), but the pipeline reads its dtype
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, projection_dim=embed_dim, num_hidden_layers=1, num_attention_heads=4,
            image_size=32, patch_size=8))
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=None, image_encoder=image_encoder, image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), tokenizer=None, text_encoder=None,
        unet=unet, scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                           steps_offset=1), vae=vae)
    return pipe


def load_unclip_pipeline(path: Path):
    from diffusers import StableUnCLIPImg2ImgPipeline

    if not (path / "model_index.json").is_file():
        raise WeightsError(f"{WHERE}.decoder: {path} is not a diffusers pipeline folder (no model_index.json); give "
                           "a local copy of stabilityai/stable-diffusion-2-1-unclip")
    try:
        with no_loading_bars():
            return StableUnCLIPImg2ImgPipeline.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                               torch_dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise WeightsError(f"{WHERE}.decoder: cannot load StableUnCLIPImg2ImgPipeline from {path}: "
                           f"{type(exc).__name__}: {exc}") from None


def pipeline_fingerprint(pipe) -> str:
    state = {}
    for name in ("unet", "vae", "image_normalizer", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return fingerprint_state_dict(state)


# ---- the adapter -------------------------------------------------------------------------------------
class SeedImageCodec(ImageCodec):
    kind = "seed"
    settings = SeedSettings

    @classmethod
    def from_settings(cls, settings: SeedSettings, *, device: str = "cpu") -> "SeedImageCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        a = SeedArch()
        return [CodecVariant(model="-", sizes={"proc_size": [a.img_size] * 2, "n_tokens": a.n_query,
                                               "codebook_size": a.codebook_size, "layout": "causal1d"},
                             note="SEED-2 (SEED-LLaMA) tokenizer; decode through SD 2.1 unCLIP")]

    def __init__(self, settings: SeedSettings, *, device: str = "cpu"):
        self._settings = settings
        self._weights: WeightsSpec = parse_weights(settings.weights, where=f"{WHERE}.weights")
        self.device = resolve_device(device)
        self.name = "seed"
        if self._weights.kind == "pretrained":
            raise ConfigError(f"{WHERE}.weights: 'pretrained' would download; uti never downloads codec weights. "
                              "Download seed_quantizer.pt (AILab-CVC/seed-tokenizer-2) once and give its path")
        if self._weights.kind == "path":
            if settings.arch is not None:
                raise ConfigError(f"{WHERE}.arch: applies to random weights; {self._weights.path} brings its own sizes")
            state = load_state(self._weights.path, what=f"{WHERE}.weights")
            if settings.vit_weights:
                state = self._merge_vit(state, Path(settings.vit_weights).expanduser())
            net = SeedTokenizerNet(infer_arch(state))
            load_checkpoint(net, state, source=str(self._weights.path))
        else:
            if settings.vit_weights:
                raise ConfigError(f"{WHERE}.vit_weights: only with a checkpoint path in weights:, not random weights")
            arch = arch_from_settings(settings.arch)
            seed = int(self._weights.seed)
            net = build_random(lambda: SeedTokenizerNet(arch), seed=seed, calibrate=self._calibrate,
                               cache_key=f"seed|{sorted(arch.to_dict().items())}|seed={seed}")
        self._net = net.eval().to(self.device)
        self._arch: SeedArch = self._net.arch
        self._fingerprint = fingerprint(self._net)
        mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        self._mean, self._std = mean.view(1, 3, 1, 1).to(self.device), std.view(1, 3, 1, 1).to(self.device)
        self._decoder = None
        self._decoder_label = "none"
        self._decoder_fingerprint = ""
        if settings.decoder:
            self._load_decoder(settings.decoder)

    def _merge_vit(self, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
        vit = load_state(path, what=f"{WHERE}.vit_weights")
        clash = sorted(k for k in state if k.startswith("visual_encoder."))
        if clash:
            raise WeightsError(f"{WHERE}.vit_weights: the checkpoint already has {len(clash)} visual_encoder.* keys "
                               f"(e.g. {clash[0]}); drop vit_weights or use a checkpoint without them")
        return {**state, **{f"visual_encoder.{k}": v for k, v in vit.items()}}

    def _load_decoder(self, spec: str) -> None:
        if spec.startswith("random:"):
            if self._arch.image_features_dim > 256:
                raise ConfigError(f"{WHERE}.decoder: random:SEED builds a tiny test pipeline and goes with arch: small; "
                                  "for the real SEED give a local stabilityai/stable-diffusion-2-1-unclip folder")
            decoder_seed = parse_weights(spec, where=f"{WHERE}.decoder").seed
            pipe = tiny_unclip_pipeline(self._arch.image_features_dim, int(decoder_seed))
            self._decoder_label = spec
        else:
            pipe = load_unclip_pipeline(Path(spec).expanduser())
            self._decoder_label = "pretrained"
            want = int(pipe.image_normalizer.mean.shape[-1])
            if want != self._arch.image_features_dim:
                raise ConfigError(f"{WHERE}.decoder: {spec} takes {want}-dim image embeddings, the SEED model gives "
                                  f"{self._arch.image_features_dim}")
        pipe.set_progress_bar_config(disable=True)
        self._decoder = pipe.to(self.device)
        self._decoder_fingerprint = pipeline_fingerprint(pipe)

    # ---- sizes ----
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def proc_size(self) -> tuple[int, int]:
        return (self._arch.img_size, self._arch.img_size)

    @property
    def n_tokens(self) -> int:
        return int(self._net.query_tokens.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        raise TypeError("SEED's codes are a causal 1D sequence (n_tokens), not a grid; read the token space's "
                        "layout (TokenSpace.layout('image')) instead of ImageCodec.grid")

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantize.embedding.num_embeddings)

    def runtime_sizes(self) -> dict[str, Any]:
        return {"proc_size": list(self.proc_size), "n_tokens": self.n_tokens, "codebook_size": self.codebook_size}

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec.causal1d()

    def describe(self, version: int = VERSION) -> CodecDescriptor:
        params = {**self.runtime_sizes(), "channels": 3, "resize": "short_side_center_crop",
                  "pixels": "uint8 / 255, CLIP mean/std", "attention": ATTENTION,
                  "quantizer": "nearest by euclidean distance, float64", "arch": self._arch.to_dict()}
        if version <= BATCHING_IN_DESCRIPTOR_UNTIL:  # what those versions recorded (see uti.token_space)
            params["batching"] = "one image per forward pass"
        return CodecDescriptor(modality="image", kind=self.kind, name=self.name, weights=self._weights.label,
                               fingerprint=self._fingerprint, params=params)

    def decode_info(self) -> dict[str, Any]:
        """What a decode uses (for reports; not part of the token space: tokens never depend on it)."""
        return {"decoder": self._decoder_label, "decoder_fingerprint": self._decoder_fingerprint,
                "pipeline": "StableUnCLIPImg2ImgPipeline", "steps": self._settings.decode_steps,
                "guidance_scale": self._settings.guidance_scale, "seed": self._settings.decode_seed, "noise_level": 0}

    # ---- encode ----
    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> CLIP-normalized."""
        return ((x + 1) / 2 - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.query_vectors(self._pixels(x))

    def _nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        return nearest(vectors, self._net.quantize.embedding.weight)

    @torch.inference_mode()
    def encode(self, images) -> list[np.ndarray]:
        """uint8 (S, S, 3) images -> (n_tokens,) codes each, in the queries' causal order, in passes of
        exactly `encode_batch` images (the last filled with all-zero images; hf_common.encode_image_passes):
        with the pass shape fixed, which images share a call never changes a code."""
        return encode_image_passes(self, images, size=self._arch.img_size, vectors=self._vectors,
                                   nearest_of=self._nearest, shape=(self.n_tokens,))

    # ---- decode ----
    def check_codes(self, codes: Any) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.shape != (self.n_tokens,):
            raise DecodeRefused(f"{self.name}: codes must be ({self.n_tokens},) in causal order, got {codes.shape}")
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.codebook_size:
            raise DecodeRefused(f"{self.name}: codes outside [0, {self.codebook_size})")
        return codes.astype(np.int64)

    @torch.inference_mode()
    def image_embedding(self, codes: Any) -> torch.Tensor:
        """(n_tokens,) codes -> the (1, image_features_dim) unCLIP image embedding SEED's decoder maps them to."""
        return self._net.image_embedding(torch.from_numpy(self.check_codes(codes)).to(self.device))

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n_tokens,) codes -> uint8 (S, S, 3) at proc_size, through the unCLIP pipeline (fixed seed and steps)."""
        codes = self.check_codes(codes)
        if self._decoder is None:
            raise DecodeUnavailable(f"{self.name}: no decoder configured, so SEED codes cannot be turned into pixels; "
                                    "set image.decoder: to a local stabilityai/stable-diffusion-2-1-unclip folder "
                                    "(or random:SEED with arch: small for tests)")
        embeds = self.image_embedding(codes)
        pipe = self._decoder
        unet_dim = int(pipe.unet.config.cross_attention_dim)
        kwargs: dict[str, Any] = {}
        if pipe.text_encoder is None:  # the tiny pipeline has no text encoder: an empty (zero) prompt
            kwargs["prompt_embeds"] = torch.zeros(1, 1, unet_dim, device=self.device)
            kwargs["negative_prompt_embeds"] = torch.zeros(1, 1, unet_dim, device=self.device)
        else:
            kwargs["prompt"] = ""
        generator = torch.Generator(device=self.device).manual_seed(int(self._settings.decode_seed))
        out = pipe(image_embeds=embeds, noise_level=0, num_inference_steps=self._settings.decode_steps,
                   guidance_scale=self._settings.guidance_scale, generator=generator, output_type="np", **kwargs).images
        img = (np.clip(np.asarray(out[0]), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return self._to_proc_size(img)

    def _to_proc_size(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        size = self._arch.img_size
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
        return img

    # ---- random weights ----
    def _calibrate(self, net: SeedTokenizerNet, seed: int) -> None:
        """Seed the codebook from quantizer inputs of fixed scenes, so random-weight codes spread over it."""
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)
        net.double()
        try:
            vectors = calibration_vectors(lambda x: net.query_vectors(((x + 1) / 2 - mean) / std),
                                          net.arch.img_size, seed)
        finally:
            net.float()
        g = torch.Generator().manual_seed(seed + 1)
        net.quantize.embedding.weight.copy_(seed_codebook(vectors, net.arch.codebook_size, g))
