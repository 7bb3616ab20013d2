"""Janus's image-generation tokenizer (`transformers.JanusVQVAE`, the LlamaGen VQ-16 of Janus /
Janus-Pro) as the image codec: 16x spatial downsampling, 16,384 codes of dimension 8, 384 px images in
a 24x24 grid. The decoder takes exactly `num_patches` x `num_patches` codes, so the image size follows
from the model (`proc_size` may only repeat it).

Nearest codes are searched as Janus's own VQ does: between l2-normalized vectors and l2-normalized
codebook rows (its `codebook_l2_norm`), which `JanusVQVAE.encode` in transformers leaves out.

Weights: a local folder holding a JanusVQVAE in the transformers format (config.json with model_type
"janus_vqgan" + model.safetensors), or `random:SEED` (+ `arch: small`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (HFImageSettings, ImagePassCodec, arch_kwargs, architecture, build_config,
                                  build_random, calibration_vectors, check_kind, fingerprint,
                                  load_local_model, pick_variant, random_cache_key, require_random_or_folder,
                                  seed_codebook)
from uti.codecs.weights import parse_weights, resolve_device
from uti.errors import ConfigError

VARIANTS: dict[str, dict[str, Any]] = {"janus": {"num_patches": 24}}  # Janus-Pro: 384 px / 16
SMALL = dict(embed_dim=8, num_embeddings=256, latent_channels=32, base_channels=32, channel_multiplier=[1, 2],
             num_res_blocks=1, num_patches=16, projection_dim=32, image_token_embed_dim=32)
WHERE = "image"


@dataclass(kw_only=True, frozen=True)
class JanusSettings(HFImageSettings):
    """`image: {kind: janus, weights: ..., arch: small}`"""

    kind: str = "janus"

    def __post_init__(self) -> None:
        check_kind(self, "janus")


class JanusImageCodec(ImagePassCodec):
    kind = "janus"
    settings = JanusSettings
    _cosine = True

    @classmethod
    def from_settings(cls, settings: JanusSettings, *, device: str = "cpu") -> "JanusImageCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import JanusVQVAEConfig

        c = JanusVQVAEConfig(**VARIANTS["janus"])
        proc = c.num_patches * 2 ** (len(c.channel_multiplier) - 1)
        return [CodecVariant(model="janus", sizes={"proc_size": [proc, proc], "grid": [c.num_patches] * 2,
                                                   "codebook_size": c.num_embeddings, "layout": "grid2d"},
                             note="Janus / Janus-Pro image-generation VQ")]

    def __init__(self, settings: JanusSettings, *, device: str = "cpu"):
        from transformers import JanusVQVAE, JanusVQVAEConfig

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "save the vqmodel of deepseek-community/Janus-Pro-1B with JanusVQVAE.save_pretrained(DIR)"))
        pick_variant(VARIANTS, settings.model, default="janus", where=WHERE)
        self.device = resolve_device(device)
        if self._weights.kind == "path":
            net = load_local_model(JanusVQVAE, self._weights, arch=settings.arch, where=WHERE, model_type="janus_vqgan",
                                   attention=False)
        else:
            cfg = build_config(JanusVQVAEConfig, arch_kwargs(VARIANTS["janus"], SMALL, settings.arch,
                                                             config_cls=JanusVQVAEConfig, where=WHERE), where=WHERE)
            seed = int(self._weights.seed)
            net = build_random(lambda: JanusVQVAE(cfg), seed=seed, calibrate=self._calibrate,
                               cache_key=random_cache_key("janus", cfg, seed))
        c = net.config
        self._proc = int(c.num_patches * 2 ** (len(c.channel_multiplier) - 1))
        if settings.proc_size is not None and settings.proc_size != self._proc:
            raise ConfigError(f"{WHERE}.proc_size: {settings.proc_size}, but this Janus model decodes "
                              f"{c.num_patches}x{c.num_patches} codes to {self._proc} px images; drop proc_size")
        self.name = "janus"
        self._net = net.eval().to(self.device)
        self._grid = self._probe_grid()
        if self._grid != (c.num_patches, c.num_patches):
            raise ConfigError(f"{WHERE}: a {self._proc} px image gives a {self._grid} grid, the decoder takes "
                              f"{c.num_patches}x{c.num_patches}")
        self._fingerprint = fingerprint(self._net)

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantize.embedding.num_embeddings)

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config)}

    def _vectors(self, x: torch.Tensor, net=None) -> torch.Tensor:
        net = net or self._net
        z = net.quant_conv(net.encoder(x.to(net.dtype)))  # (B, embed_dim, h, w)
        return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])

    def _book(self) -> torch.Tensor:
        return self._net.quantize.embedding.weight

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self._net.decode(codes.reshape(1, -1))[0]

    def _calibrate(self, net, seed: int) -> None:
        c = net.config
        factor = 2 ** (len(c.channel_multiplier) - 1)
        size = int(min(c.num_patches, 8) * factor)  # the encoder takes any multiple of factor
        net.double()
        try:
            vectors = calibration_vectors(lambda x: self._vectors(x, net), size, seed)
        finally:
            net.float()
        g = torch.Generator().manual_seed(seed + 1)
        net.quantize.embedding.weight.copy_(seed_codebook(vectors, c.num_embeddings, g))
