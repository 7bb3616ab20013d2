"""X-Codec (`transformers.XcodecModel`) as the audio codec: 16 kHz mono, 50 Hz frames (hop 320), up to 8
residual levels of 1024 codes. Frame-major layout. Each frame's vector joins a semantic branch (HuBERT
or WavLM, the mean of all its hidden states, through a small convolutional encoder) with DAC's acoustic
encoder; one RVQ quantizes the joined vector. The model's `bandwidth` (kbps, one of its
`target_bandwidths`) chooses how many levels are used: 0.5 kbps per level at 50 Hz, so 0.5, 1, 1.5, 2, 4
give 1, 2, 3, 4, 8 levels.

Framing: a clip is zero-padded on the right to whole frames, as `DacFeatureExtractor` (the feature
extractor of the hf-audio/xcodec-* repos) does, so n samples give ceil(n / 320) frames. Measured on the
model itself without that padding, n samples give floor((n + 240) / 320) frames (the semantic branch's
HuBERT frames: its 400-sample window over the clip padded by 160 each side), so a last partial frame
under 80 samples is dropped and a clip under 80 samples fails; the acoustic branch pads itself by 160
each side whenever its frame count would differ. On whole frames both branches give exactly n / 320
frames and the model pads nothing itself. With encode_batch > 1 a clip is padded to its bucket of frames.

Semantic preprocessing (recorded in the token space): the raw waveform, not normalized, at the
model's own rate, zero-padded by hop / 2 = 160 samples on each side, into the semantic model.

Weights: a local copy of one of the hf-audio/xcodec-* repos (config.json, model.safetensors,
preprocessor_config.json), or `random:SEED` (+ `arch: small`). Random weights leave the RVQ codebooks
at zero (every code would be 0), so each level is seeded from residuals of the joined vectors of a
fixed calibration signal.

The Higgs Audio v2 tokenizer (uti.codecs.higgs_audio_v2) is this model with a 24 kHz acoustic branch
and a resampling semantic one; it reuses `XcodecFamilyCodec`, `pick_bandwidth` and `calibrate_rvq`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (BatchedAudioCodec, HFAudioSettings, arch_kwargs, architecture, build_config,
                                  build_random, check_kind, fingerprint, load_local_model, pick_variant,
                                  random_cache_key, require_random_or_folder, seed_codebook_picks)
from uti.codecs.weights import WeightsSpec, calibration_signal, parse_weights, resolve_device
from uti.errors import ConfigError, WeightsError

WHERE = "audio"
# hf-audio/xcodec-*: XcodecConfig's defaults (DAC hop 320 at 16 kHz, 1024 codes, 0.5..4 kbps) with the
# semantic model each was converted with (HuBERT base / WavLM base plus: HubertConfig / WavLMConfig defaults)
VARIANTS: dict[str, dict[str, Any]] = {
    "hubert-librispeech": {},  # facebook/hubert-base-ls960
    "hubert-general": {},  # ZhenYe234/hubert_base_general_audio (HuBERT base)
    "hubert-general-balanced": {},
    "wavlm-mls": {"semantic_model_config": {"model_type": "wavlm"}},  # microsoft/wavlm-base-plus
    "wavlm-more-data": {"semantic_model_config": {"model_type": "wavlm"}},
}
DEFAULT = "hubert-librispeech"
# A tiny HuBERT with the real conv feature extractor's strides (320 samples per frame at 16 kHz)
SMALL_SEMANTIC = dict(model_type="hubert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, conv_dim=[8] * 7, num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4)
SMALL_ACOUSTIC = dict(model_type="dac", encoder_hidden_size=8, decoder_hidden_size=32, hidden_size=16)
# 64 codes (6 bits) at 50 Hz: 0.3 kbps per level, so 0.6 and 1.2 kbps give 2 and 4 levels
SMALL = dict(codebook_size=64, target_bandwidths=[0.6, 1.2], acoustic_model_config=SMALL_ACOUSTIC,
             semantic_model_config=SMALL_SEMANTIC)
INPUT_PADDING = "right zeros to whole frames of hop_length (DacFeatureExtractor's padding of one clip)"
SEMANTIC_FEATURES = "mean of all hidden states (embedding output and every layer)"


@dataclass(kw_only=True, frozen=True)
class XcodecSettings(HFAudioSettings):
    """`audio: {kind: xcodec, model: hubert-librispeech | ..., bandwidth: 4.0, weights: ..., arch: small}`"""

    kind: str = "xcodec"
    bandwidth: float | None = None  # kbps, one of the model's target_bandwidths; None: its highest (all levels)

    def __post_init__(self) -> None:
        check_kind(self, "xcodec")
        check_bandwidth_setting(self.bandwidth)

    def promised_sizes(self) -> dict[str, Any]:
        return {} if self.bandwidth is None else {"bandwidth": float(self.bandwidth)}


def check_bandwidth_setting(bandwidth: Any) -> None:
    if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float))
                                  or bandwidth <= 0):
        raise ConfigError(f"{WHERE}.bandwidth: must be a positive number of kbps or null (the model's highest), "
                          f"got {bandwidth!r}")


def pick_bandwidth(wanted: float | None, offered, *, name: str) -> float:
    """The bandwidth encode passes to the model: one of the model's own target_bandwidths (it refuses
    any other), by default its highest."""
    offered = [float(b) for b in offered]
    if wanted is None:
        return offered[-1]
    if float(wanted) not in offered:
        raise ConfigError(f"{WHERE}.bandwidth: {wanted} kbps is not one {name} offers; choose one of {offered}")
    return float(wanted)


def check_preprocessor(path: Path, net) -> None:
    """A folder's preprocessor_config.json (DacFeatureExtractor) must frame audio as the model does:
    the adapter pads clips itself, to whole frames of the model's hop at the model's rate."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return
    try:
        pre = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{WHERE}.weights: {file} is not readable JSON: {exc}") from None
    want = {"sampling_rate": int(net.config.sample_rate), "hop_length": int(net.config.hop_length)}
    wrong = {k: pre[k] for k in want if k in pre and int(pre[k]) != want[k]}
    if wrong:
        raise WeightsError(f"{WHERE}.weights: {file} sets {wrong}, but the model in {path} takes {want}; "
                           "the folder mixes two models")


def calibrate_rvq(net, seed: int) -> None:
    """Seed every RVQ level's codebook from the residuals of the joined (post-`fc`) vectors of a fixed
    signal; levels with a projection (Higgs) are seeded in their projected space and the residual
    updated through `project_out`, as the model's own RVQ does. A vector's residual is taken against
    the nearest entry seeded from another vector: with fewer vectors than codes (288 for 1024) each
    would otherwise find its own noisy copy, its residual would shrink 20-fold per level and the last
    levels of the real architecture would hold one code (measured: levels 7 and 8 of X-Codec). The
    model runs in float64 (exact to and from float32) so the seeded codebooks never depend on threads
    or BLAS; they are rounded to float16 precision."""
    cfg = net.config
    hop, rate = int(cfg.hop_length), int(cfg.sample_rate)
    frames = min(int(cfg.codebook_size), 256) + 32
    x = calibration_signal(rate, 1, frames * hop / rate, seed)
    x = torch.nn.functional.pad(x, (0, frames * hop - x.shape[-1]))
    captured: dict[str, torch.Tensor] = {}

    def keep_output(module, inputs, output) -> None:  # returns None: the output stays as it is
        captured["h"] = output.detach()

    hook = net.fc.register_forward_hook(keep_output)
    net.double()
    try:
        net.encode(x.double(), return_dict=True)
    finally:
        hook.remove()
        net.float()
    residual = captured["h"][0].double()  # (frames, hidden)
    g = torch.Generator().manual_seed(seed + 1)
    for level in net.quantizer.quantizers:
        vectors = _project(residual, getattr(level, "project_in", None))
        book, picked_from = seed_codebook_picks(vectors, int(cfg.codebook_size), g)
        cb = level.codebook
        cb.embed.copy_(book)
        cb.embed_avg.copy_(book)
        cb.cluster_size.fill_(1.0)
        chosen = book.double()[nearest_other(vectors, book, picked_from)]
        residual = residual - _project(chosen, getattr(level, "project_out", None))


def nearest_other(vectors: torch.Tensor, book: torch.Tensor, picked_from: torch.Tensor) -> torch.Tensor:
    """For each of (N, D) vectors, the nearest (euclidean, float64) codebook row not seeded from it."""
    v, b = vectors.double(), book.double()
    dist = v.pow(2).sum(1, keepdim=True) - 2 * v @ b.T + b.pow(2).sum(1)[None]
    own = picked_from[None, :] == torch.arange(v.shape[0])[:, None]
    return dist.masked_fill(own, float("inf")).argmin(dim=1)


def _project(v: torch.Tensor, linear: torch.nn.Linear | None) -> torch.Tensor:
    return v if linear is None else v @ linear.weight.double().T + linear.bias.double()


class XcodecFamilyCodec(BatchedAudioCodec):
    """What X-Codec and the Higgs Audio v2 tokenizer (its modular subclass in transformers) share:
    weights, sizes, bandwidth, batched encode and decode. A subclass names its transformers classes,
    variants, small architecture and the semantic branch's preprocessing."""

    model_type: ClassVar[str]
    variants_table: ClassVar[Mapping[str, dict[str, Any]]]
    small: ClassVar[Mapping[str, Any]]
    default_model: ClassVar[str]
    download_hint: ClassVar[str]

    @classmethod
    def model_classes(cls) -> tuple[type, type]:
        """(config class, model class) from transformers."""
        raise NotImplementedError

    @classmethod
    def variant_name(cls, model: str) -> str:
        raise NotImplementedError

    @classmethod
    def variant_note(cls, model: str, config) -> str:
        raise NotImplementedError

    def semantic_preprocessing(self) -> dict[str, Any]:
        """How the waveform reaches the semantic model, read from the loaded model's config."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings, *, device: str = "cpu"):
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        config_cls, _ = cls.model_classes()
        out = []
        for model, kwargs in cls.variants_table.items():
            c = config_cls(**kwargs)
            out.append(CodecVariant(model=model, sizes={
                "sample_rate": c.sample_rate, "channels": 1, "frame_rate": c.sample_rate / c.hop_length,
                "codebook_size": c.codebook_size, "max_n_q": c.num_quantizers, "layout": "frame_major",
                "n_q": {f"{float(b):g}": _levels_for(c, b) for b in c.target_bandwidths}},  # as EnCodec's
                note=cls.variant_note(model, c)))
        return out

    def __init__(self, settings, *, device: str = "cpu"):
        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=self.download_hint)
        if self._weights.kind == "path":
            net, self.name = self._load_folder(settings)
        else:
            net, self.name = self._build_random(settings)
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        self._bandwidth = pick_bandwidth(settings.bandwidth, self._net.config.target_bandwidths, name=self.name)
        rvq = self._net.quantizer
        self._n_q = min(int(rvq.get_num_quantizers_for_bandwidth(self._bandwidth)), len(rvq.quantizers))
        self._fingerprint = fingerprint(self._net)

    def _load_folder(self, settings) -> tuple[torch.nn.Module, str]:
        _, model_cls = self.model_classes()
        spec: WeightsSpec = self._weights
        net = load_local_model(model_cls, spec, arch=settings.arch, where=WHERE, model_type=self.model_type,
                               attention=True)
        check_preprocessor(spec.path, net)
        if settings.model is None:
            return net, self.kind
        pick_variant(self.variants_table, settings.model, default=self.default_model, where=WHERE)
        config_cls, _ = self.model_classes()
        want = config_cls(**self.variants_table[settings.model]).semantic_model_config.model_type
        have = net.config.semantic_model_config.model_type
        if have != want:
            raise ConfigError(f"{WHERE}.model: {settings.model!r} has a {want} semantic model, but {spec.path} holds "
                              f"one with {have}; drop model: or fix it")
        return net, self.variant_name(settings.model)

    def _build_random(self, settings) -> tuple[torch.nn.Module, str]:
        config_cls, model_cls = self.model_classes()
        variant = pick_variant(self.variants_table, settings.model, default=self.default_model, where=WHERE)
        cfg = build_config(config_cls, arch_kwargs(self.variants_table[variant], self.small, settings.arch,
                                                   config_cls=config_cls, where=WHERE), where=WHERE)
        seed = int(self._weights.seed)
        net = build_random(lambda: model_cls(cfg), seed=seed, cache_key=random_cache_key(self.kind, cfg, seed),
                           calibrate=calibrate_rvq)
        return net, self.variant_name(variant)

    # ---- sizes read from the model ------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self._net.config.sample_rate)

    @property
    def channels(self) -> int:
        return 1  # the model refuses anything but mono

    @property
    def n_q(self) -> int:
        return self._n_q

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantizer.quantizers[0].codebook.embed.shape[0])

    @property
    def hop_length(self) -> int:
        return int(self._net.config.hop_length)  # the product of the DAC encoder's strides

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bandwidth(self) -> float:
        return self._bandwidth

    def runtime_sizes(self) -> dict[str, Any]:
        return {**super().runtime_sizes(), "bandwidth": self._bandwidth}

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config), "padding": INPUT_PADDING,
                "semantic": self.semantic_preprocessing()}

    # ---- codes --------------------------------------------------------------------------------------
    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        # One batched forward: no step mixes rows. The semantic model normalizes each row over its own
        # time axis (GroupNorm with one group per channel, LayerNorm per frame), attends within the row
        # (no mask: every row has the pass's length); the DAC encoder, `fc` and the RVQ are per row.
        frames = self.expected_frames(int(x.shape[-1]))  # a bucket length is whole frames already
        x = torch.nn.functional.pad(x, (0, frames * self.hop_length - x.shape[-1]))
        codes = self._net.encode(x, bandwidth=self._bandwidth, return_dict=True).audio_codes  # (batch, n_q, frames)
        return codes.transpose(1, 2).cpu().numpy()

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(codes.T.copy())[None].to(self.device)  # (1, n_q, frames)
        return self._net.decode(t, return_dict=True).audio_values[0]  # (1, frames * hop)


def _levels_for(config, bandwidth: float) -> int:
    """RVQ levels a model of `config` encodes at `bandwidth`, for listing without building it: its
    quantizer's get_num_quantizers_for_bandwidth (floor(bandwidth / (log2(codebook_size) * frame_rate
    / 1000))), at most the levels it has."""
    per_level = math.log2(config.codebook_size) * config.frame_rate / 1000
    return min(int(max(1, math.floor(float(bandwidth) / per_level))), config.num_quantizers)


class XcodecAudioCodec(XcodecFamilyCodec):
    kind = "xcodec"
    settings = XcodecSettings
    model_type = "xcodec"
    variants_table = VARIANTS
    small = SMALL
    default_model = DEFAULT
    download_hint = "huggingface-cli download hf-audio/xcodec-hubert-librispeech --local-dir /models/xcodec"

    @classmethod
    def model_classes(cls) -> tuple[type, type]:
        from transformers import XcodecConfig, XcodecModel

        return XcodecConfig, XcodecModel

    @classmethod
    def variant_name(cls, model: str) -> str:
        return f"xcodec_{model}"

    @classmethod
    def variant_note(cls, model: str, config) -> str:
        return (f"hf-audio/xcodec-{model}; {config.semantic_model_config.model_type} semantic branch; "
                "bandwidth (kbps) sets n_q")

    def semantic_preprocessing(self) -> dict[str, Any]:
        cfg = self._net.config
        return {"model_type": cfg.semantic_model_config.model_type, "sample_rate": int(cfg.sample_rate),
                "resample": None, "normalize": False, "pad_each_side": int(self._net.pad),
                "features": SEMANTIC_FEATURES, "frame_step": 1}
