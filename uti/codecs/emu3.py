"""Emu3's vision tokenizer (`transformers.Emu3VQVAE`) as the image codec: 8x spatial downsampling,
32,768 codes, with a decoder. Images are encoded at one fixed square size (`proc_size`, default 512:
a 64x64 grid), not Emu3's own dynamic resolution; the model's temporal axis (built for video) gets
the image repeated `temporal_downsample_factor` times, as Emu3 does for stills.

Weights: a local folder holding an Emu3VQVAE in the transformers format (config.json with model_type
"emu3_vqgan" + model.safetensors), or `random:SEED` (+ `arch: small`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (SMALL as SMALL_NAME, HFImageSettings, ImagePassCodec, arch_kwargs, architecture,
                                  build_config, build_random, calibration_vectors, check_kind,
                                  fingerprint, load_local_model, pick_variant, random_cache_key,
                                  require_random_or_folder, seed_codebook)
from uti.codecs.weights import parse_weights, resolve_device
from uti.errors import ConfigError

VARIANTS: dict[str, dict[str, Any]] = {"emu3": {}}  # Emu3VQVAEConfig's defaults are Emu3's vision tokenizer
SMALL = dict(codebook_size=256, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
             num_res_blocks=1, attn_resolutions=[1], hidden_size=64, num_attention_heads=1)
DEFAULT_PROC = {"real": 512, SMALL_NAME: 32}
WHERE = "image"


@dataclass(kw_only=True, frozen=True)
class Emu3Settings(HFImageSettings):
    """`image: {kind: emu3, proc_size: 512, weights: ..., arch: small}`"""

    kind: str = "emu3"

    def __post_init__(self) -> None:
        check_kind(self, "emu3")
        if self.proc_size is not None and self.proc_size <= 0:
            raise ConfigError(f"image.proc_size: must be positive, got {self.proc_size}")


class Emu3ImageCodec(ImagePassCodec):
    kind = "emu3"
    settings = Emu3Settings

    @classmethod
    def from_settings(cls, settings: Emu3Settings, *, device: str = "cpu") -> "Emu3ImageCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import Emu3VQVAEConfig

        c = Emu3VQVAEConfig(**VARIANTS["emu3"])
        factor = 2 ** (len(c.channel_multiplier) - 1)
        proc = DEFAULT_PROC["real"]
        return [CodecVariant(model="emu3", sizes={"proc_size": [proc, proc], "grid": [proc // factor] * 2,
                                                  "codebook_size": c.codebook_size, "layout": "grid2d"},
                             note=f"Emu3 vision tokenizer; proc_size: any multiple of {factor}")]

    def __init__(self, settings: Emu3Settings, *, device: str = "cpu"):
        from transformers import Emu3VQVAE, Emu3VQVAEConfig

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "save the vqmodel of Emu3-community/Emu3-Gen-hf with Emu3VQVAE.save_pretrained(DIR)"))
        pick_variant(VARIANTS, settings.model, default="emu3", where=WHERE)
        self.device = resolve_device(device)
        if self._weights.kind == "path":
            net = load_local_model(Emu3VQVAE, self._weights, arch=settings.arch, where=WHERE, model_type="emu3_vqgan",
                                   attention=True)
            self._proc = int(settings.proc_size or DEFAULT_PROC["real"])
        else:
            cfg = build_config(Emu3VQVAEConfig, arch_kwargs(VARIANTS["emu3"], SMALL, settings.arch,
                                                            config_cls=Emu3VQVAEConfig, where=WHERE), where=WHERE)
            self._proc = int(settings.proc_size or DEFAULT_PROC[SMALL_NAME if settings.arch == SMALL_NAME else "real"])
            # calibration scenes: small (a float64 pass of the real encoder over 256 px takes minutes)
            self._calibration_size = min(self._proc, 8 * 2 ** (len(cfg.channel_multiplier) - 1))
            seed = int(self._weights.seed)
            net = build_random(lambda: Emu3VQVAE(cfg), seed=seed, calibrate=self._calibrate,
                               cache_key=random_cache_key("emu3", cfg, seed, extra=f"calibration={self._calibration_size}"))
        self.name = "emu3"
        self._net = net.eval().to(self.device)
        factor = 2 ** (len(self._net.config.channel_multiplier) - 1)
        if self._proc % factor:
            raise ConfigError(f"{WHERE}.proc_size: {self._proc} is not a multiple of {factor}, this Emu3 model's "
                              "downsampling factor")
        self._grid = self._probe_grid()
        self._fingerprint = fingerprint(self._net)

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantize.embedding.num_embeddings)

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config)}

    def _vectors(self, x: torch.Tensor, net=None) -> torch.Tensor:
        net = net or self._net
        frames = x.unsqueeze(1).repeat(1, net.config.temporal_downsample_factor, 1, 1, 1).to(net.dtype)
        hidden = net.encoder(frames)  # (B, t, c, h, w)
        latent = net.quant_conv(hidden.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)  # (B, t, embed_dim, h, w)
        if latent.shape[1] != 1:
            raise ConfigError(f"{self.name}: an image gives {latent.shape[1]} latent frames, expected 1")
        return latent[:, 0].permute(0, 2, 3, 1).reshape(latent.shape[0], -1, latent.shape[2])

    def _book(self) -> torch.Tensor:
        return self._net.quantize.embedding.weight

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self._net.decode(codes[None])[0]

    def _calibrate(self, net, seed: int) -> None:
        """Seed the codebook from quantizer inputs of fixed scenes (the model runs in float64 and back)."""
        net.double()
        try:
            vectors = calibration_vectors(lambda x: self._vectors(x, net), self._calibration_size, seed)
        finally:
            net.float()
        g = torch.Generator().manual_seed(seed + 1)
        net.quantize.embedding.weight.copy_(seed_codebook(vectors, net.quantize.embedding.num_embeddings, g))
