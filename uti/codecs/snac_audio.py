"""SNAC (the `snac` package: Multi-Scale Neural Audio Codec) as the audio codec: 24, 32 or 44.1 kHz mono,
levels of 4096 codes at different time rates (24 kHz: 3 levels at about 12, 23 and 47 Hz; 32 and
44 kHz: 4 levels). Multirate layout: per frame of the coarsest level, its one code, then the 2 codes
of level 1 in that span, then the 4 of level 2 (...), so a sequence is whole frames of 7 (or 15) tokens.

The model pads a clip on the right to a whole number of its padding unit (hop * lcm(coarsest stride,
attention window)), so every level's code count is a whole multiple of the coarsest's. With
encode_batch > 1 a clip's padding units (not frames) are rounded up to their bucket (`padding_rule`):
a pass's length must be whole units, or SNAC would pad it further itself. SNAC's decoder
adds noise (`NoiseBlock`, `torch.randn`): decode runs it under a fixed seed, recorded in the token space.

Weights: a local copy of hubertsiuzdak/snac_24khz (snac_32khz, snac_44khz): config.json with
model.safetensors, or the official pytorch_model.bin (read with torch.load(weights_only=True), which
refuses anything but tensors); or `random:SEED` (+ `arch: small`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (BatchedAudioCodec, HFAudioSettings, arch_kwargs, build_random, check_kind,
                                  fingerprint, nearest, pick_variant, require_random_or_folder, seed_codebook)
from uti.codecs.weights import calibration_signal, parse_weights, resolve_device
from uti.errors import ConfigError, WeightsError
from uti.token_space import LayoutSpec, canonical_json

# The published models' config.json (hubertsiuzdak/snac_*)
VARIANTS: dict[str, dict[str, Any]] = {
    "24khz": dict(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                  decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                  vq_strides=[4, 2, 1], noise=True, depthwise=True),
    "32khz": dict(sampling_rate=32000, encoder_dim=64, encoder_rates=[2, 3, 8, 8], decoder_dim=1536,
                  decoder_rates=[8, 8, 3, 2], attn_window_size=32, codebook_size=4096, codebook_dim=8,
                  vq_strides=[8, 4, 2, 1], noise=True, depthwise=True),
    "44khz": dict(sampling_rate=44100, encoder_dim=64, encoder_rates=[2, 3, 8, 8], decoder_dim=1536,
                  decoder_rates=[8, 8, 3, 2], attn_window_size=32, codebook_size=4096, codebook_dim=8,
                  vq_strides=[8, 4, 2, 1], noise=True, depthwise=True),
}
SMALL = dict(encoder_dim=8, decoder_dim=64, codebook_size=64, codebook_dim=8)
KNOWN = {"sampling_rate", "encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates",
         "attn_window_size", "codebook_size", "codebook_dim", "vq_strides", "noise", "depthwise"}
DECODE_NOISE_SEED = 0
WHERE = "audio"


class _SnacConfig:
    """The SNAC constructor's arguments, shaped like an HF config for arch_kwargs."""

    def __init__(self, **kwargs: Any):
        self._kwargs = kwargs

    def to_dict(self) -> dict[str, Any]:
        return {k: None for k in KNOWN}


@dataclass(kw_only=True, frozen=True)
class SnacSettings(HFAudioSettings):
    """`audio: {kind: snac, model: 24khz | 32khz | 44khz, weights: ..., arch: small}`"""

    kind: str = "snac"

    def __post_init__(self) -> None:
        check_kind(self, "snac")

    def promised_sizes(self) -> dict[str, Any]:
        return {"sample_rate": VARIANTS[self.model]["sampling_rate"]} if self.model in VARIANTS else {}


def _sizes(kwargs: dict[str, Any]) -> dict[str, Any]:
    hop = int(np.prod(kwargs["encoder_rates"]))
    strides = list(kwargs["vq_strides"])
    group = hop * strides[0]
    return {"sample_rate": kwargs["sampling_rate"], "channels": 1, "frame_rate": kwargs["sampling_rate"] / group,
            "codebook_size": kwargs["codebook_size"], "n_q": len(strides),
            "codes_per_frame": [strides[0] // s for s in strides], "layout": "multirate"}


class SnacAudioCodec(BatchedAudioCodec):
    kind = "snac"
    settings = SnacSettings

    @classmethod
    def from_settings(cls, settings: SnacSettings, *, device: str = "cpu") -> "SnacAudioCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        return [CodecVariant(model=name, sizes=_sizes(kw), note=f"hubertsiuzdak/snac_{name}")
                for name, kw in VARIANTS.items()]

    def __init__(self, settings: SnacSettings, *, device: str = "cpu"):
        from snac import SNAC

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "huggingface-cli download hubertsiuzdak/snac_24khz --local-dir /models/snac_24khz"))
        if self._weights.kind == "path":
            if settings.arch is not None:
                raise ConfigError(f"{WHERE}.arch: applies to random weights; {self._weights.path} brings its config.json")
            kwargs = _read_config(self._weights.path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the constructor's random init is replaced by the loaded state
                net = SNAC(**kwargs)
            _load_state(net, self._weights.path)
            named = {v["sampling_rate"]: k for k, v in VARIANTS.items()}.get(kwargs["sampling_rate"])
            if settings.model is not None and settings.model != named:
                raise ConfigError(f"{WHERE}.model: {settings.model!r}, but {self._weights.path} holds a "
                                  f"{kwargs['sampling_rate']} Hz SNAC; drop model: or fix it")
            self.name = f"snac_{named or kwargs['sampling_rate']}"
        else:
            variant = pick_variant(VARIANTS, settings.model, default="24khz", where=WHERE)
            kwargs = arch_kwargs(VARIANTS[variant], SMALL, settings.arch, config_cls=_SnacConfig, where=WHERE)
            seed = int(self._weights.seed)
            try:
                net = build_random(lambda: SNAC(**kwargs), seed=seed, calibrate=_calibrate,
                                   cache_key=f"snac|{canonical_json(kwargs).decode()}|seed={seed}")
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"{WHERE}.arch: SNAC refuses these settings: {exc}") from None
            self.name = f"snac_{variant}"
        self._arch = {k: kwargs.get(k) for k in sorted(KNOWN)}
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        self._fingerprint = fingerprint(self._net)
        strides = [int(s) for s in self._net.vq_strides]
        if any(strides[0] % s for s in strides) or strides != sorted(strides, reverse=True):
            raise ConfigError(f"{WHERE}: SNAC vq_strides {strides} must fall and divide the first; the multirate "
                              "layout groups every level's codes per frame of the coarsest one")
        self._strides = strides
        self._pad_unit = int(self._net.hop_length) * math.lcm(strides[0], self._net.attn_window_size or 1)

    # ---- sizes read from the model ------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self._net.sampling_rate)

    @property
    def channels(self) -> int:
        return 1

    @property
    def n_q(self) -> int:
        return int(self._net.n_codebooks)

    @property
    def codebook_size(self) -> int:
        return int(self._net.codebook_size)

    @property
    def hop_length(self) -> int:
        """Samples per frame of the coarsest level."""
        return int(self._net.hop_length) * self._strides[0]

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def codes_per_frame(self) -> list[int]:
        return [self._strides[0] // s for s in self._strides]

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec.multirate(self.codes_per_frame)

    def framing(self) -> dict[str, int]:
        return {"pad_to": self._pad_unit, "extra": 0}  # SNAC.preprocess pads to its padding unit

    def runtime_sizes(self) -> dict[str, Any]:
        return {**super().runtime_sizes(), "codes_per_frame": self.codes_per_frame}

    def _params(self) -> dict[str, Any]:
        return {"arch": self._arch, "decode_noise_seed": DECODE_NOISE_SEED}

    # ---- codes --------------------------------------------------------------------------------------
    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        levels = self._net.encode(x)  # per level (batch, frames * codes_per_frame[k])
        batch, n_frames = int(x.shape[0]), int(levels[0].shape[-1])
        cols = [lvl.reshape(batch, n_frames, per).cpu().numpy() for lvl, per in zip(levels, self.codes_per_frame)]
        return np.concatenate(cols, axis=2)  # (batch, n_frames, sum(codes_per_frame)): level 0, then 1, ...

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        levels, col = [], 0
        for per in self.codes_per_frame:
            levels.append(torch.from_numpy(codes[:, col: col + per].reshape(1, -1).copy()).to(self.device))
            col += per
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(DECODE_NOISE_SEED)
            return self._net.decode(levels)[0]


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise WeightsError(f"{WHERE}.weights: {path} is not a SNAC folder (config.json + model.safetensors or "
                           "pytorch_model.bin)")
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{WHERE}.weights: {path / 'config.json'} is not readable JSON: {exc}") from None
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise WeightsError(f"{WHERE}.weights: {path / 'config.json'} has keys SNAC does not take: {unknown}")
    return data


def _load_state(net, path: Path) -> None:
    safetensors, pickle_free = path / "model.safetensors", path / "pytorch_model.bin"
    if safetensors.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safetensors))
    elif pickle_free.is_file():
        try:
            state = torch.load(pickle_free, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{WHERE}.weights: {pickle_free} is not a weights-only state dict: {exc}") from None
    else:
        raise WeightsError(f"{WHERE}.weights: {path} has neither model.safetensors nor pytorch_model.bin")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{WHERE}.weights: {path} does not match the SNAC of its config.json (missing "
                           f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]})")


def _calibrate(net, seed: int) -> None:
    """Seed each level's codebook from (residual, average-pooled) projected encoder outputs of a fixed
    signal, in float64 in place and back (exact); the entries are rounded to float16 precision."""
    frames = min(int(net.codebook_size), 256) + 32
    unit = int(net.hop_length) * int(net.vq_strides[0])
    x = calibration_signal(int(net.sampling_rate), 1, frames * unit / float(net.sampling_rate), seed)
    net.double()
    try:
        residual = net.encoder(net.preprocess(x.double()))  # (1, latent, T)
        g = torch.Generator().manual_seed(seed + 1)
        for vq in net.quantizer.quantizers:
            z = torch.nn.functional.avg_pool1d(residual, vq.stride, vq.stride) if vq.stride > 1 else residual
            z_e = vq.in_proj(z)[0].T  # (T', codebook_dim)
            book = seed_codebook(z_e, vq.codebook_size, g)
            vq.codebook.weight.copy_(book.double())
            unit = torch.nn.functional.normalize  # the quantizer picks by cosine, decodes the raw entry
            z_q = vq.out_proj(book.double()[nearest(unit(z_e, dim=1), unit(book.double(), dim=1))].T[None])
            if vq.stride > 1:
                z_q = z_q.repeat_interleave(vq.stride, dim=-1)
            residual = residual - z_q
    finally:
        net.float()
