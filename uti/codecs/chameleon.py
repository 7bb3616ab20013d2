"""Chameleon's image tokenizer (`transformers.ChameleonVQVAE`, the VQGAN of Chameleon 7B/30B) as the image
codec: 16x spatial downsampling, 8,192 codes of dimension 256, 512 px images in a 32x32 grid.

Pixels: the uint8 image / 255 * 2 - 1, computed in float64 and rounded to float32, which is what
Chameleon's own image tokenizer (facebookresearch/chameleon, image_tokenizer.py) feeds the VQGAN. Two
differences from `transformers.ChameleonImageProcessor`, recorded in the token space: that processor
rescales by 0.0078 (uint8 * 0.0078 - 1, so white is 0.989, not 1) and resizes with Lanczos, while uti's
image reader resizes the short side bicubic (both then center-crop). Its tokens can therefore differ from
those of `processor + model.get_image_tokens`.

Weights (`weights:`), loaded in float32:
* a local folder holding a standalone ChameleonVQVAE saved with `save_pretrained` (config.json with
  model_type "chameleon_vqgan" + safetensors);
* a local folder of the full Chameleon model as released (facebook/chameleon-7b: config.json with model_type
  "chameleon" and its `vq_config`, safetensors shards): only the `model.vqmodel.*` tensors are read (with
  safetensors' safe_open, so the language model's ~14 GB are never loaded), and a missing, extra or
  wrong-shaped VQ tensor is named;
* `random:SEED` on the real architecture, or with `arch: small` (a tiny config of the same classes) for tests.

Decoding: transformers' ChameleonVQVAE is the encoder half of Chameleon's VQGAN (the released checkpoints
carry no decoder weights), so this module builds the decoder of the original VQGAN (a taming-transformers
decoder: conv_in, mid blocks, num_res_blocks + 1 resnet blocks per level with nearest 2x upsampling,
norm_out, conv_out) from the same config, fed by the model's `post_quant_conv`. Its weights (`decoder:`):
* a .safetensors file holding the original VQGAN's `decoder.*` tensors (tokenizer/vqgan.ckpt of the
  Chameleon release, converted once; see DECODER_HINT); any other tensors in the file are ignored, except
  that a `quantize.embedding.weight` must equal the loaded codebook (a decoder of another VQGAN is refused);
* `random:SEED`; with random weights this is the default (`random:` + the weights' seed), so a random
  codec decodes for tests and demos. A folder without `decoder:` has no decoder, and decode raises
  DecodeUnavailable (decode checks skip, not fail).
The decoder is not part of the token space (tokens never depend on it); `decode_info()` says which one a
decode used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (NOT_ARCHITECTURE, SMALL as SMALL_NAME, HFImageSettings, ImagePassCodec,
                                  arch_kwargs, architecture, build_config, build_random, calibration_vectors,
                                  check_folder, check_kind, fingerprint, pick_variant,
                                  random_cache_key, require_random_or_folder, seed_codebook)
from uti.codecs.weights import WeightsSpec, fingerprint_state_dict, parse_weights, resolve_device
from uti.errors import ConfigError, DecodeUnavailable, WeightsError

VARIANTS: dict[str, dict[str, Any]] = {"chameleon": {}}  # ChameleonVQVAEConfig's defaults: facebook/chameleon-7b's VQ
SMALL = dict(embed_dim=8, num_embeddings=256, latent_channels=32, resolution=32, base_channels=32,
             channel_multiplier=[1, 2], num_res_blocks=1)
WHERE = "image"
STANDALONE, FULL = "chameleon_vqgan", "chameleon"  # the model types of the two folder layouts
# Where the VQ's tensors sit in a full checkpoint: ChameleonForConditionalGeneration, or ChameleonModel alone.
VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")
PIXELS = "uint8 / 255 * 2 - 1 in float64, then float32 (Chameleon's own image tokenizer)"
PROCESSOR_DIFFERENCE = ("transformers' ChameleonImageProcessor gives uint8 * 0.0078 - 1 (white 0.989) after a Lanczos "
                        "resize; uti's reader resizes bicubic; both center-crop the short side")
DECODER_HINT = ("convert the decoder of Chameleon's original VQGAN once, where you trust the file: "
                "sd = torch.load('tokenizer/vqgan.ckpt', map_location='cpu', weights_only=True)['state_dict']; "
                "safetensors.torch.save_file({k: v for k, v in sd.items() if k.startswith(('decoder.', "
                "'quantize.'))}, 'chameleon_vq_decoder.safetensors')")


@dataclass(kw_only=True, frozen=True)
class ChameleonSettings(HFImageSettings):
    """`image: {kind: chameleon, weights: /models/chameleon-7b, decoder: /models/chameleon_vq_decoder.safetensors}`"""

    kind: str = "chameleon"
    decoder: str | None = None  # a .safetensors of the VQGAN's decoder.* tensors or random:SEED; see the module doc

    def __post_init__(self) -> None:
        check_kind(self, "chameleon")
        if self.proc_size is not None and self.proc_size <= 0:
            raise ConfigError(f"{WHERE}.proc_size: must be positive, got {self.proc_size}")


# ---- the decoder of Chameleon's VQGAN ----------------------------------------------------------------------
class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class ChameleonVQDecoder(nn.Module):
    """The decoder of Chameleon's VQGAN, sized by a ChameleonVQVAEConfig; its parameter names are those of
    the original checkpoint's `decoder.*` tensors. The resnet and attention blocks are transformers' own
    encoder blocks: the original VQGAN uses one block class in both halves."""

    def __init__(self, config: Any):
        super().__init__()
        from transformers.models.chameleon.modeling_chameleon import (ChameleonVQVAEEncoderAttnBlock as Attn,
                                                                      ChameleonVQVAEEncoderResnetBlock as Resnet)

        mult = tuple(config.channel_multiplier)
        vanilla = config.attn_type == "vanilla"
        attn_at = set(config.attn_resolutions or []) if vanilla else set()
        block_in = config.base_channels * mult[-1]
        res = config.resolution // 2 ** (len(mult) - 1)
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = Resnet(config=config, in_channels=block_in, out_channels=block_in)
        self.mid.attn_1 = Attn(block_in) if vanilla else nn.Identity()
        self.mid.block_2 = Resnet(config=config, in_channels=block_in, out_channels=block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(len(mult))):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = config.base_channels * mult[level]
            for _ in range(config.num_res_blocks + 1):
                up.block.append(Resnet(config=config, in_channels=block_in, out_channels=block_out))
                block_in = block_out
                if res in attn_at:
                    up.attn.append(Attn(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)  # up[0] is the full-resolution level, as in the checkpoint
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(num_groups=32, num_channels=block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        h = self.norm_out(h)
        return self.conv_out(h * torch.sigmoid(h))


# ---- loading ---------------------------------------------------------------------------------------------
def load_folder(weights: WeightsSpec, *, arch: Any):
    """A ChameleonVQVAE from either folder layout (see the module doc), in float32, eval mode. Both are read
    the same way, so that every missing, unexpected or wrong-shaped tensor is named (from_pretrained
    reports a wrong shape in a log table and raises without the name)."""
    from transformers import ChameleonVQVAE

    path = weights.path
    if arch is not None:
        raise ConfigError(f"{WHERE}.arch: applies to random weights; {path} brings its config.json")
    config = check_folder(path, where=WHERE, model_type=None)
    model_type = config.get("model_type")
    if model_type not in (STANDALONE, FULL):
        raise WeightsError(f"{WHERE}.weights: {path / 'config.json'} is a {model_type!r} model; this adapter loads a "
                           f"ChameleonVQVAE ({STANDALONE!r}) or a full Chameleon model ({FULL!r})")
    cfg = vq_config(config.get("vq_config") if model_type == FULL else config, path)
    names = safetensors_names(path)
    prefix = vq_prefix(names, path) if model_type == FULL else ""
    state = read_tensors(names, prefix)
    net = ChameleonVQVAE(cfg)
    check_state(state, net.state_dict(), what=f"{WHERE}.weights: {path}", prefix=prefix)
    net.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return net.eval()


def vq_config(vq: Any, path: Path):
    """The ChameleonVQVAEConfig a folder's config.json (or a full model's `vq_config`) describes."""
    from transformers import ChameleonVQVAEConfig

    if not isinstance(vq, Mapping):
        raise WeightsError(f"{WHERE}.weights: {path / 'config.json'} is a Chameleon model without a vq_config; "
                           "is it a complete facebook/chameleon-* download?")
    kwargs = {k: v for k, v in vq.items() if k not in NOT_ARCHITECTURE and k != "model_type"}
    try:
        return ChameleonVQVAEConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{WHERE}.weights: ChameleonVQVAEConfig refuses the VQ config of {path / 'config.json'}: "
                           f"{exc}") from None


def safetensors_names(path: Path) -> dict[Path, list[str]]:
    """The tensor names of each safetensors file of a folder (headers only)."""
    from safetensors import safe_open

    names: dict[Path, list[str]] = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                names[file] = list(handle.keys())
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one clear line
            raise WeightsError(f"{WHERE}.weights: {file} is not a readable safetensors file: {exc}") from None
    return names


def vq_prefix(names: Mapping[Path, list[str]], path: Path) -> str:
    """Which of VQ_PREFIXES a full Chameleon folder's tensors use."""
    for prefix in VQ_PREFIXES:
        if any(k.startswith(prefix) for keys in names.values() for k in keys):
            return prefix
    raise WeightsError(f"{WHERE}.weights: {path} is a Chameleon model folder but its safetensors hold no tensor named "
                       f"{' or '.join(p + '*' for p in VQ_PREFIXES)}; is the download complete?")


def read_tensors(names: Mapping[Path, list[str]], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix` (prefix removed), read one by one: in a full Chameleon
    folder the language model's tensors are never loaded."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for file, keys in names.items():
        wanted = [k for k in keys if k.startswith(prefix)]
        if wanted:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for key in wanted:
                    state[key[len(prefix):]] = handle.get_tensor(key)
    return state


def check_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, what: str,
                prefix: str = "") -> None:
    """Exactly the expected tensors at the expected shapes, or a WeightsError naming what differs."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(f"{prefix}{k} {tuple(state[k].shape)} (need {tuple(expected[k].shape)})"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing_keys: {[prefix + k for k in missing[:8]]}")
    if extra:
        problems.append(f"unexpected_keys: {[prefix + k for k in extra[:8]]}")
    if shapes:
        problems.append(f"mismatched_keys: {shapes[:8]}")
    if problems:
        raise WeightsError(f"{what} does not hold exactly the weights of Chameleon's VQ ({'; '.join(problems)}); "
                           "is it the right model?")


def load_decoder_file(path: Path, decoder: ChameleonVQDecoder, codebook: torch.Tensor) -> None:
    """The `decoder.*` tensors of a .safetensors file into `decoder`; a codebook in the file must be ours."""
    from safetensors import safe_open

    what = f"{WHERE}.decoder: {path}"
    if not path.is_file() or path.suffix != ".safetensors":
        raise WeightsError(f"{what} is not a .safetensors file; uti reads decoder weights from safetensors only: "
                           + DECODER_HINT)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            state = {k[len("decoder."):]: handle.get_tensor(k) for k in keys if k.startswith("decoder.")}
            book = handle.get_tensor("quantize.embedding.weight") if "quantize.embedding.weight" in keys else None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one clear line
        raise WeightsError(f"{what} is not a readable safetensors file: {exc}") from None
    if not state:
        raise WeightsError(f"{what} holds no decoder.* tensors; " + DECODER_HINT)
    check_state(state, decoder.state_dict(), what=what, prefix="decoder.")
    if book is not None and not torch.equal(book.to(torch.float32), codebook.detach().cpu().float()):
        raise WeightsError(f"{what}: its quantize.embedding.weight is not the loaded model's codebook; this decoder "
                           "belongs to another VQGAN")
    decoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


# ---- the codec -------------------------------------------------------------------------------------------
class ChameleonImageCodec(ImagePassCodec):
    kind = "chameleon"
    settings = ChameleonSettings

    @classmethod
    def from_settings(cls, settings: ChameleonSettings, *, device: str = "cpu") -> "ChameleonImageCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import ChameleonVQVAEConfig

        c = ChameleonVQVAEConfig(**VARIANTS["chameleon"])
        factor = 2 ** (len(c.channel_multiplier) - 1)
        sizes = {"proc_size": [c.resolution] * 2, "grid": [c.resolution // factor] * 2,
                 "codebook_size": c.num_embeddings, "layout": "grid2d"}
        return [CodecVariant(model="chameleon", sizes=sizes,
                             note=f"Chameleon 7B/30B image VQ; proc_size: any multiple of {factor}; a folder decodes "
                                  "with decoder: (the VQGAN decoder's safetensors)")]

    def __init__(self, settings: ChameleonSettings, *, device: str = "cpu"):
        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "huggingface-cli download facebook/chameleon-7b --include '*.json' '*.safetensors*'"))
        pick_variant(VARIANTS, settings.model, default="chameleon", where=WHERE)
        self.device = resolve_device(device)
        net = load_folder(self._weights, arch=settings.arch) if self._weights.kind == "path" else \
            self._random_net(settings)
        self.name = "chameleon"
        self._net = net.eval().to(self.device)
        factor = self._factor(self._net.config)
        self._proc = int(settings.proc_size or self._net.config.resolution)
        if self._proc % factor:
            raise ConfigError(f"{WHERE}.proc_size: {self._proc} is not a multiple of {factor}, this Chameleon VQ's "
                              "downsampling factor")
        self._grid = self._probe_grid()
        self._fingerprint = fingerprint(self._net)
        self._build_decoder(settings.decoder)

    @staticmethod
    def _factor(config: Any) -> int:
        return 2 ** (len(config.channel_multiplier) - 1)

    def _random_net(self, settings: ChameleonSettings):
        from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

        cfg = build_config(ChameleonVQVAEConfig, arch_kwargs(VARIANTS["chameleon"], SMALL, settings.arch,
                                                             config_cls=ChameleonVQVAEConfig, where=WHERE), where=WHERE)
        # calibration scenes: small (a float64 pass of the real encoder over 512 px takes minutes)
        self._calibration_size = min(int(settings.proc_size or cfg.resolution), 8 * self._factor(cfg))
        seed = int(self._weights.seed)
        return build_random(lambda: ChameleonVQVAE(cfg), seed=seed, calibrate=self._calibrate,
                            cache_key=random_cache_key("chameleon", cfg, seed,
                                                       extra=f"calibration={self._calibration_size}"))

    def _build_decoder(self, spec: str | None) -> None:
        if spec is None and self._weights.kind == "random":
            spec = f"random:{self._weights.seed}"
        self._decoder: ChameleonVQDecoder | None = None
        self._decoder_label, self._decoder_fingerprint = "none", ""
        if spec is None:
            return
        source = parse_weights(spec, where=f"{WHERE}.decoder")
        if source.kind == "pretrained":
            raise ConfigError(f"{WHERE}.decoder: 'pretrained' would download; give a local .safetensors file "
                              "or random:SEED")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(source.seed or 0))
            decoder = ChameleonVQDecoder(self._net.config).eval()
        if source.kind == "path":
            load_decoder_file(source.path, decoder, self._book())
        self._decoder = decoder.to(self.device)
        self._decoder_label = spec if source.kind == "random" else "pretrained"
        self._decoder_fingerprint = fingerprint_state_dict(decoder.state_dict())

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantize.embedding.num_embeddings)

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config), "pixels": PIXELS, "preprocessing_note": PROCESSOR_DIFFERENCE}

    def decode_info(self) -> dict[str, Any]:
        """What a decode uses (for reports; not part of the token space: tokens never depend on it)."""
        return {"decoder": self._decoder_label, "decoder_fingerprint": self._decoder_fingerprint,
                "architecture": "Chameleon VQGAN decoder (post_quant_conv + taming decoder)"}

    @staticmethod
    def pixels(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 / 127.5 - 1 (what the pass machinery gives) -> Chameleon's own pixel values. The
        uint8 values come back exactly (their error is below 1e-5, far from 0.5)."""
        u = torch.round((x.double() + 1.0) * 127.5)
        return (u / 255.0 * 2.0 - 1.0).to(x.dtype)

    def _vectors(self, x: torch.Tensor, net=None) -> torch.Tensor:
        net = net or self._net
        z = net.quant_conv(net.encoder(self.pixels(x).to(net.dtype)))  # (B, embed_dim, h, w)
        return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])

    def _book(self) -> torch.Tensor:
        return self._net.quantize.embedding.weight

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if self._decoder is None:
            raise DecodeUnavailable(f"{self.name}: no decoder configured, so these codes cannot be turned into pixels "
                                    "(transformers' ChameleonVQVAE is the encoder half of Chameleon's VQGAN); set "
                                    f"image.decoder: to a .safetensors of its decoder.* tensors ({DECODER_HINT})")
        h, w = codes.shape
        quant = self._net.quantize.embedding(codes.reshape(-1)).reshape(1, h, w, -1).permute(0, 3, 1, 2)
        return self._decoder(self._net.post_quant_conv(quant))[0]

    def _calibrate(self, net, seed: int) -> None:
        """Seed the codebook from quantizer inputs of fixed scenes (the model runs in float64 and back)."""
        net.double()
        try:
            vectors = calibration_vectors(lambda x: self._vectors(x, net), self._calibration_size, seed)
        finally:
            net.float()
        g = torch.Generator().manual_seed(seed + 1)
        net.quantize.embedding.weight.copy_(seed_codebook(vectors, net.quantize.embedding.num_embeddings, g))


__all__ = ["ChameleonImageCodec", "ChameleonSettings", "ChameleonVQDecoder"]
