"""DAC (Descript Audio Codec; `transformers.DacModel`) as the audio codec: 44.1, 24 or 16 kHz mono, one
frame per 512 (44 kHz) or 320 samples, 9 / 32 / 12 levels of 1024 codes (factorized, l2-normalized
codebooks); `n_q` may use fewer levels. Frame-major layout. Clips are zero-padded on the right to whole
frames, as DAC's own `preprocess` does (with encode_batch > 1: to their bucket of frames; DAC is
non-causal, so the tail frames see that padding, a function of the clip's length alone).

Weights: a local copy of descript/dac_44khz (dac_24khz, dac_16khz) in the transformers format, or
`random:SEED` (+ `arch: small`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (BatchedAudioCodec, HFAudioSettings, arch_kwargs, architecture, build_config,
                                  build_random, check_kind, fingerprint, load_local_model, pick_variant,
                                  random_cache_key, require_random_or_folder)
from uti.codecs.weights import parse_weights, resolve_device
from uti.errors import ConfigError

# descript-audio-codec's published models (its training configs), as DacConfig settings
VARIANTS: dict[str, dict[str, Any]] = {
    "44khz": dict(sampling_rate=44100, encoder_hidden_size=64, downsampling_ratios=[2, 4, 8, 8],
                  decoder_hidden_size=1536, n_codebooks=9, codebook_size=1024, codebook_dim=8),
    "24khz": dict(sampling_rate=24000, encoder_hidden_size=64, downsampling_ratios=[2, 4, 5, 8],
                  decoder_hidden_size=1536, n_codebooks=32, codebook_size=1024, codebook_dim=8),
    "16khz": dict(sampling_rate=16000, encoder_hidden_size=64, downsampling_ratios=[2, 4, 5, 8],
                  decoder_hidden_size=1536, n_codebooks=12, codebook_size=1024, codebook_dim=8),
}
SMALL = dict(encoder_hidden_size=8, decoder_hidden_size=32, n_codebooks=4, codebook_size=64, codebook_dim=8)
WHERE = "audio"


@dataclass(kw_only=True, frozen=True)
class DacSettings(HFAudioSettings):
    """`audio: {kind: dac, model: 44khz | 24khz | 16khz, n_q: null, weights: ..., arch: small}`"""

    kind: str = "dac"
    n_q: int | None = None  # levels used; None: all the model has

    def __post_init__(self) -> None:
        check_kind(self, "dac")
        if self.n_q is not None and (isinstance(self.n_q, bool) or self.n_q < 1):
            raise ConfigError(f"audio.n_q: must be a positive integer or null (all levels), got {self.n_q!r}")

    def promised_sizes(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.n_q is None else {"n_q": self.n_q}
        if self.model in VARIANTS:  # a named model promises its sample rate
            out["sample_rate"] = VARIANTS[self.model]["sampling_rate"]
        return out


class DacAudioCodec(BatchedAudioCodec):
    kind = "dac"
    settings = DacSettings

    @classmethod
    def from_settings(cls, settings: DacSettings, *, device: str = "cpu") -> "DacAudioCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import DacConfig

        out = []
        for name, kwargs in VARIANTS.items():
            c = DacConfig(**kwargs)
            out.append(CodecVariant(model=name, sizes={
                "sample_rate": c.sampling_rate, "channels": 1, "frame_rate": c.sampling_rate / c.hop_length,
                "codebook_size": c.codebook_size, "n_q": c.n_codebooks, "max_n_q": c.n_codebooks,
                "layout": "frame_major"}, note=f"descript/dac_{name}; n_q: settable"))
        return out

    def __init__(self, settings: DacSettings, *, device: str = "cpu"):
        from transformers import DacConfig, DacModel

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE,
                                 download_hint="huggingface-cli download descript/dac_44khz --local-dir /models/dac_44khz")
        if self._weights.kind == "path":
            net = load_local_model(DacModel, self._weights, arch=settings.arch, where=WHERE, model_type="dac",
                                   attention=False)
            rate = int(net.config.sampling_rate)
            named = {v["sampling_rate"]: k for k, v in VARIANTS.items()}.get(rate, f"{rate}hz")
            if settings.model is not None and settings.model != named:
                raise ConfigError(f"{WHERE}.model: {settings.model!r}, but {self._weights.path} holds a {rate} Hz DAC "
                                  f"({named}); drop model: or fix it")
            self.name = f"dac_{named}"
        else:
            variant = pick_variant(VARIANTS, settings.model, default="44khz", where=WHERE)
            cfg = build_config(DacConfig, arch_kwargs(VARIANTS[variant], SMALL, settings.arch, config_cls=DacConfig,
                                                      where=WHERE), where=WHERE)
            seed = int(self._weights.seed)
            net = build_random(lambda: DacModel(cfg), seed=seed, cache_key=random_cache_key("dac", cfg, seed))
            self.name = f"dac_{variant}"
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        levels = int(self._net.config.n_codebooks)
        n_q = levels if settings.n_q is None else int(settings.n_q)
        if not 1 <= n_q <= levels:
            raise ConfigError(f"{WHERE}.n_q: {n_q} is outside 1..{levels}, the levels this DAC model has")
        self._n_q = n_q
        self._fingerprint = fingerprint(self._net)

    @property
    def sample_rate(self) -> int:
        return int(self._net.config.sampling_rate)

    @property
    def channels(self) -> int:
        return 1

    @property
    def n_q(self) -> int:
        return self._n_q

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantizer.quantizers[0].codebook.num_embeddings)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def hop_length(self) -> int:
        return int(np.prod(self._net.config.downsampling_ratios))

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config), "padding": "right zeros to whole frames"}

    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        frames = self.expected_frames(int(x.shape[-1]))  # a bucket length is whole frames already
        x = torch.nn.functional.pad(x, (0, frames * self.hop_length - x.shape[-1]))
        codes = self._net.encode(x, n_quantizers=self._n_q).audio_codes  # (batch, n_q, frames)
        return codes.transpose(1, 2).cpu().numpy()

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(codes.T.copy())[None].to(self.device)
        return self._net.decode(audio_codes=t).audio_values  # (1, samples): mono
