"""Mimi (Kyutai's codec of Moshi; `transformers.MimiModel`) as the audio codec: 24 kHz mono, 12.5 Hz
frames, up to 32 levels of 2048 codes (level 0 semantic, distilled from WavLM); `n_q` of them are
used (Moshi uses 8). Frame-major layout. With encode_batch > 1 a clip is zero-padded to its bucket of
frames and passes carry no padding mask: the padded clip is the item, every row of a pass one length.

Weights: a local copy of kyutai/mimi (`weights: /models/mimi`), or `random:SEED` (+ `arch: small`).
Random weights leave Mimi's codebooks at zero (every code would be 0), so they are seeded from encoder
outputs of a fixed calibration signal, as EnCodec's are (uti.codecs.encodec_audio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (BatchedAudioCodec, HFAudioSettings, arch_kwargs, build_config, build_random,
                                  check_kind, fingerprint, load_local_model, nearest, pick_variant,
                                  random_cache_key, require_random_or_folder, seed_codebook, architecture)
from uti.codecs.weights import calibration_signal, parse_weights, resolve_device
from uti.errors import ConfigError

VARIANTS: dict[str, dict[str, Any]] = {"mimi": {}}  # MimiConfig's defaults are kyutai/mimi's
SMALL = dict(hidden_size=64, num_filters=8, num_hidden_layers=1, intermediate_size=128, num_attention_heads=2,
             num_key_value_heads=2, head_dim=32, codebook_size=64, codebook_dim=32,
             vector_quantization_hidden_dimension=32, num_quantizers=8, upsample_groups=64, sliding_window=16,
             max_position_embeddings=1000)
WHERE = "audio"


@dataclass(kw_only=True, frozen=True)
class MimiSettings(HFAudioSettings):
    """`audio: {kind: mimi, n_q: 8, weights: random:0 | /models/mimi, arch: small}`"""

    kind: str = "mimi"
    n_q: int = 8  # levels used, 1 (semantic only) .. the model's num_quantizers (32)

    def __post_init__(self) -> None:
        check_kind(self, "mimi")
        if isinstance(self.n_q, bool) or self.n_q < 1:
            raise ConfigError(f"audio.n_q: must be a positive integer, got {self.n_q!r}")

    def promised_sizes(self) -> dict[str, Any]:
        return {"n_q": self.n_q}


class MimiAudioCodec(BatchedAudioCodec):
    kind = "mimi"
    settings = MimiSettings

    @classmethod
    def from_settings(cls, settings: MimiSettings, *, device: str = "cpu") -> "MimiAudioCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import MimiConfig

        c = MimiConfig(**VARIANTS["mimi"])
        return [CodecVariant(model="mimi", sizes={
            "sample_rate": c.sampling_rate, "channels": c.audio_channels, "frame_rate": float(c.frame_rate),
            "codebook_size": c.codebook_size, "n_q": MimiSettings().n_q, "max_n_q": c.num_quantizers,
            "layout": "frame_major"}, note="kyutai/mimi; level 0 is semantic; n_q: settable")]

    def __init__(self, settings: MimiSettings, *, device: str = "cpu"):
        from transformers import MimiConfig, MimiModel

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE,
                                 download_hint="huggingface-cli download kyutai/mimi --local-dir /models/mimi")
        pick_variant(VARIANTS, settings.model, default="mimi", where=WHERE)
        if self._weights.kind == "path":
            net = load_local_model(MimiModel, self._weights, arch=settings.arch, where=WHERE, model_type="mimi",
                                   attention=True)
        else:
            cfg = build_config(MimiConfig, arch_kwargs(VARIANTS["mimi"], SMALL, settings.arch, config_cls=MimiConfig,
                                                       where=WHERE), where=WHERE)
            seed = int(self._weights.seed)
            net = build_random(lambda: MimiModel(cfg), seed=seed, cache_key=random_cache_key("mimi", cfg, seed),
                               calibrate=_calibrate)
        _forget_cached_codebooks(net)
        self.name = "mimi"
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        c = self._net.config
        if not c.num_semantic_quantizers <= settings.n_q <= c.num_quantizers:
            raise ConfigError(f"{WHERE}.n_q: {settings.n_q} is outside {c.num_semantic_quantizers}..{c.num_quantizers}, "
                              "the levels this Mimi model has")
        self._n_q = int(settings.n_q)
        self._fingerprint = fingerprint(self._net)

    # ---- sizes read from the model ------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self._net.config.sampling_rate)

    @property
    def channels(self) -> int:
        return int(self._net.config.audio_channels)

    @property
    def n_q(self) -> int:
        return self._n_q

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantizer.codebook_size)

    @property
    def frame_rate(self) -> float:
        return float(self._net.config.frame_rate)

    @property
    def hop_length(self) -> int:
        return int(self._net.config.frame_size)

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config)}

    # ---- codes --------------------------------------------------------------------------------------
    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        # No padding mask: the pass's rows are whole items (a clip and its zero padding), all one length.
        codes = self._net.encode(x, num_quantizers=self._n_q).audio_codes  # (batch, n_q, frames)
        return codes.transpose(1, 2).cpu().numpy()

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(codes.T.copy())[None].to(self.device)  # (1, n_q, frames)
        return self._net.decode(t).audio_values[0]


def _forget_cached_codebooks(net) -> None:
    """MimiEuclideanCodebook caches embed_sum / cluster_usage on first use; loading new weights into a
    model that already ran would otherwise keep the old codebook."""
    for module in net.modules():
        if hasattr(module, "embed_sum") and hasattr(module, "_embed"):
            module._embed = None


def _calibrate(net, seed: int) -> None:
    """Seed every level's codebook with (residual) projected encoder outputs of a fixed signal; the
    encoder runs in float64 in place and back (exact), the codebooks are rounded to float16 precision."""
    cfg = net.config
    frames = min(int(cfg.codebook_size), 256) + 32
    x = calibration_signal(int(cfg.sampling_rate), int(cfg.audio_channels), frames / float(cfg.frame_rate), seed)
    net.encoder.double()
    try:
        latents = net.encoder(x.double()).latents[0].T.contiguous()  # (frames, hidden)
    finally:
        net.encoder.float()
    g = torch.Generator().manual_seed(seed + 1)
    for rvq in (net.quantizer.semantic_residual_vector_quantizer, net.quantizer.acoustic_residual_vector_quantizer):
        residual = latents if rvq.input_proj is None else latents @ rvq.input_proj.weight[:, :, 0].double().T
        for layer in rvq.layers:
            book = seed_codebook(residual, int(cfg.codebook_size), g)
            cb = layer.codebook
            cb.embed_sum.copy_(book)
            cb.cluster_usage.fill_(1.0)
            cb.initialized.fill_(1.0)
            cb._embed = None
            residual = residual - book.double()[nearest(residual, book)]
