"""A VQGAN-family image tokenizer on `diffusers.VQModel`: deterministic encode/decode on a fixed grid.

Images are brought to `proc_size` (short side resized, then center-cropped) before encoding; the grid
is read from the model by encoding a blank image (runtime introspection). Images are encoded in passes
of exactly `encode_batch` (uti.codecs.batching: the last pass filled with all-zero images), the
nearest-code search in float64 for the whole pass at once (hf_common.encode_image_passes), so which
images share a call never changes a code.
"""

from __future__ import annotations

import json
import logging
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from uti.codecs.base import CodecVariant, ImageCodec
from uti.codecs.hf_common import encode_image_passes, nearest
from uti.codecs.weights import cached_random_state, fingerprint_state_dict, parse_weights, resolve_device
from uti.config import ImageArch, ImageConfig
from uti.errors import ConfigError, DecodeRefused, WeightsError
from uti.quiet import no_loading_bars
from uti.strict import to_dict as strict_to_dict
from uti.token_space import VERSION, CodecDescriptor

log = logging.getLogger(__name__)


def to_rgb_array(img: Image.Image, size: int) -> np.ndarray:
    """Any PIL mode (CMYK, palette, 16-bit, alpha) -> uint8 RGB (size, size, 3), short side resized."""
    img = to_rgb(img)
    nw, nh, left, top = resize_geometry(*img.size, size)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (CMYK, palette, 16-bit, alpha) -> RGB at its own size: 16-bit scaled to 8, alpha
    composited on white. The mode half of to_rgb_array, shared by preparation on the device."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def resize_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top): the short side resized to `size`, then a centred size x size crop."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def calibration_images(size: int, count: int, seed: int) -> np.ndarray:
    """Deterministic simple scenes (gradients, boxes, discs, stripes) used to seed random codebooks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        img = c0 * (1 - yy[..., None]) + c1 * yy[..., None]
        for _ in range(3):
            color = rng.uniform(0, 1, 3)
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
            else:
                mask = (abs(xx - cx) < r) & (abs(yy - cy) < r * 0.7)
            img[mask] = color
        if rng.random() < 0.3:
            img = img * (0.75 + 0.25 * (np.sin(xx * rng.uniform(10, 40)) > 0))[..., None]
        out[i] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


class VQImageCodec(ImageCodec):
    kind = "vqgan"
    settings = ImageConfig

    @classmethod
    def from_settings(cls, settings: ImageConfig, *, device: str = "cpu") -> "VQImageCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        a, proc = ImageArch(), ImageConfig().proc_size
        down = 2 ** (len(a.block_out_channels) - 1)
        return [CodecVariant(model="-", sizes={"proc_size": [proc, proc], "grid": [proc // down, proc // down],
                                               "codebook_size": a.num_vq_embeddings, "layout": "grid2d"},
                             note="random:SEED with image.arch, or a local diffusers VQModel folder (its own sizes)")]

    def __init__(self, cfg: ImageConfig, *, device: str = "cpu"):
        from diffusers import VQModel

        self._weights = parse_weights(cfg.weights, where="image.weights")
        self.device = resolve_device(device)
        if self._weights.kind == "random":
            a = cfg.arch
            n = len(a.block_out_channels)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self._weights.seed))
                net = VQModel(
                    down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                    block_out_channels=a.block_out_channels, layers_per_block=a.layers_per_block,
                    latent_channels=a.latent_channels, num_vq_embeddings=a.num_vq_embeddings,
                    vq_embed_dim=a.vq_embed_dim, norm_num_groups=a.norm_num_groups, sample_size=cfg.proc_size,
                )
            self.name = "vqgan-random"
            self._v1_name = self.name
        elif self._weights.kind == "path":
            path = self._weights.path
            if not (path / "config.json").is_file():
                raise WeightsError(
                    f"image.weights: {path} is not a diffusers VQModel directory (no config.json); "
                    "save one with VQModel.save_pretrained(DIR) or use random:SEED"
                )
            try:
                with no_loading_bars():
                    net = VQModel.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:
                raise WeightsError(f"image.weights: cannot load a VQModel from {path}: {exc}") from None
            self.name = "vqgan"  # not the folder name: a copy of the same model must give the same ID
            self._v1_name = f"vqgan:{path.name}"  # what version-1 token spaces recorded
        else:
            raise ConfigError("image.weights: 'pretrained' needs a local VQModel directory path; "
                              "no default download exists for the image codec")
        self._proc = int(cfg.proc_size)
        if self._weights.kind == "random":
            seed = int(self._weights.seed)
            key = f"vqgan|{json.dumps(strict_to_dict(cfg.arch), sort_keys=True)}|proc={self._proc}|seed={seed}"

            def build() -> dict[str, torch.Tensor]:
                self._net = net.eval()
                self._init_codebook(seed)
                return net.state_dict()

            net.load_state_dict(cached_random_state(key, build))
        self._net = net.eval().to(self.device)
        with torch.inference_mode():
            probe = self._net.encode(torch.zeros(1, 3, self._proc, self._proc, device=self.device)).latents
        self._grid = (int(probe.shape[-2]), int(probe.shape[-1]))
        self._fingerprint = fingerprint_state_dict(self._net.state_dict())

    @torch.inference_mode()
    def _init_codebook(self, seed: int) -> None:
        """Seed the codebook with encoder outputs of fixed synthetic scenes, so random-weight codes are
        spread over the codebook instead of collapsing onto a few entries. Computed in float64 on a
        copy and rounded to float16 precision: identical weights whatever the threads or hardware."""
        import copy

        k = self._net.quantize.n_e
        images = calibration_images(self._proc, 16, seed)
        net = copy.deepcopy(self._net).double().cpu()  # VQModel has no weight_norm: a copy is fine
        x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1.0
        latents = net.encode(x).latents
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        g = torch.Generator().manual_seed(seed + 1)
        pick = torch.randint(0, vectors.shape[0], (k,), generator=g)
        spread = float(vectors.std().float().to(torch.float16)) * 0.05
        noise = torch.randn(k, vectors.shape[1], generator=g, dtype=torch.float64)
        book = (vectors[pick] + spread * noise).float().to(torch.float16).to(torch.float32)
        self._net.quantize.embedding.weight.copy_(book.to(self._net.quantize.embedding.weight.device))

    @property
    def proc_size(self) -> tuple[int, int]:
        return (self._proc, self._proc)

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantize.n_e)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def arch(self) -> dict:
        """The model's architecture config (diffusers' own private `_` keys aside). Some of it changes the
        output without changing any weight tensor (act_fn, norm_num_groups, norm_type, ...)."""
        return {k: strict_to_dict(v) for k, v in sorted(dict(self._net.config).items()) if not k.startswith("_")}

    def describe(self, version: int = VERSION) -> CodecDescriptor:
        params = {**self.runtime_sizes(), "channels": 3, "resize": "short_side_center_crop"}
        if version == 1:  # before version 2: no architecture config, the folder name in `name`
            return CodecDescriptor(modality="image", kind="vqgan", name=self._v1_name, weights=self._weights.label,
                                   fingerprint=self._fingerprint, params=params)
        return CodecDescriptor(modality="image", kind="vqgan", name=self.name, weights=self._weights.label,
                               fingerprint=self._fingerprint, params={**params, "arch": self.arch})

    def _vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the quantizer's inputs (B, grid_h * grid_w, vq_embed_dim), row-major."""
        latents = self._net.encode(x).latents
        return latents.permute(0, 2, 3, 1).reshape(latents.shape[0], -1, latents.shape[1])

    def _nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        return nearest(vectors, self._net.quantize.embedding.weight)

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return encode_image_passes(self, images, size=self._proc, vectors=self._vectors, nearest_of=self._nearest,
                                   shape=self._grid)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.shape != self._grid:
            raise DecodeRefused(f"image codes must have the grid shape {self._grid}, got {codes.shape}")
        if codes.min(initial=0) < 0 or codes.max(initial=0) >= self.codebook_size:
            raise DecodeRefused(f"image codes outside [0, {self.codebook_size})")
        idx = torch.from_numpy(codes.astype(np.int64)).to(self.device)
        z_q = self._net.quantize.embedding(idx).permute(2, 0, 1)[None]
        img = self._net.decode(z_q, force_not_quantize=True).sample[0]
        arr = ((img.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        if arr.shape != (self._proc, self._proc, 3):
            raise DecodeRefused(f"decoded image is {arr.shape}, expected ({self._proc}, {self._proc}, 3)")
        return arr
