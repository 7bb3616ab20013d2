"""WavTokenizer (`transformers.WavTokenizerModel`; the audio tokenizer of Apertus 1.5) as the audio codec:
24 kHz mono, one codebook of 4096 codes, 40 frames/s (hop 600) or 75 frames/s (hop 320). Frame-major
layout with one level. The encoder (EnCodec's SEANet, an LSTM, no projection around the quantizer)
pads a clip itself, by reflection inside every convolution, so a clip of n samples has ceil(n / hop)
frames whatever n is. With encode_batch 1 a clip goes to the model as it is (the codes of the
original pipeline); with encode_batch > 1 it is zero-padded to its bucket of whole frames first, a
function of the clip's length alone.

Preprocessing: `WavTokenizerFeatureExtractor` only checks the rate and, with `normalize_audio`,
peak-normalizes each clip to `target_peak_dB_FS` (off in the original WavTokenizer, on for Apertus
1.5). uti applies the same scaling per clip (bit for bit the extractor's float32 product), and the
token space records whether it is on and to which peak.

Decode: the Vocos decoder's adaptive layer norms take a condition id, one embedding per training
bandwidth; inference uses id 0 (transformers' default and the original's `bandwidth_id = 0`), and
uti always decodes with it (recorded in the token space).

Weights: a local folder in the transformers format (e.g. swiss-ai/wavtokenizer-large-unify-40token:
config.json, model.safetensors, preprocessor_config.json), or `random:SEED` (+ `arch: small`). Random
weights leave the codebook at zero (every frame would get code 0), so it is seeded from encoder
outputs of a fixed calibration signal, as Mimi's is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (BatchedAudioCodec, HFAudioSettings, arch_kwargs, architecture, build_config,
                                  build_random, check_kind, fingerprint, load_local_model, pick_variant,
                                  random_cache_key, require_random_or_folder, seed_codebook)
from uti.codecs.weights import WeightsSpec, calibration_signal, parse_weights, resolve_device, round_to_half
from uti.errors import ConfigError, WeightsError

# The released models differ only in the encoder's strides (the original configs' `dowmsamples`);
# WavTokenizerConfig's defaults are the 40 tokens/s model's.
VARIANTS: dict[str, dict[str, Any]] = {
    "40token": {},
    "75token": dict(upsampling_ratios=[8, 5, 4, 2]),
}
DEFAULT = "40token"
NOTES = {
    "40token": "hop 600; swiss-ai/wavtokenizer-large-unify-40token (transformers format, Apertus 1.5), converted "
               "from novateur/WavTokenizer-large-unify-40token",
    "75token": "hop 320; novateur/WavTokenizer-large-speech-75token (and -medium-*-75token), converted to the "
               "transformers format",
}
# Tiny but the real classes and the real strides (so the real framing), with every size read back.
SMALL = dict(num_filters=4, num_lstm_layers=1, hidden_size=32, codebook_dim=32, codebook_size=64,
             decoder_hidden_size=32, decoder_intermediate_size=64, decoder_num_layers=1,
             decoder_attention_num_groups=8, adanorm_num_embeddings=4)
BANDWIDTH_ID = 0  # the decoder's condition id at inference (see the module doc)
TARGET_PEAK_DBFS = -3.0  # WavTokenizerFeatureExtractor's default
WHERE = "audio"


@dataclass(kw_only=True, frozen=True)
class WavTokenizerSettings(HFAudioSettings):
    """`audio: {kind: wavtokenizer, model: 40token | 75token, weights: ..., arch: small, normalize_audio: true}`"""

    kind: str = "wavtokenizer"
    # Peak-normalize each clip before encoding (Apertus 1.5 does). None: what the folder's
    # preprocessor_config.json says, off without one (the original WavTokenizer).
    normalize_audio: bool | None = None
    target_peak_dbfs: float | None = None  # the peak normalize_audio scales to; None: the folder's, else -3.0

    def __post_init__(self) -> None:
        check_kind(self, "wavtokenizer")
        if self.normalize_audio is not None and not isinstance(self.normalize_audio, bool):
            raise ConfigError(f"{WHERE}.normalize_audio: must be true, false or null, got {self.normalize_audio!r}")
        peak = self.target_peak_dbfs
        if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float)) or not math.isfinite(peak)):
            raise ConfigError(f"{WHERE}.target_peak_dbfs: must be a finite number of dB FS (e.g. -3.0), got {peak!r}")

    def promised_sizes(self) -> dict[str, Any]:
        if self.model in VARIANTS:  # a named model promises its hop
            return {"hop_length": _config(VARIANTS[self.model]).hop_length}
        return {}


@dataclass(frozen=True, kw_only=True)
class Normalization:
    """The extractor's per-clip peak normalization: on or off, and to which peak."""

    on: bool
    target_peak_dbfs: float

    def params(self) -> dict[str, Any]:
        return {"normalize_audio": True, "target_peak_dbfs": self.target_peak_dbfs} if self.on else \
            {"normalize_audio": False}


def _config(kwargs: dict[str, Any]):
    from transformers import WavTokenizerConfig

    return WavTokenizerConfig(**kwargs)


class WavTokenizerAudioCodec(BatchedAudioCodec):
    kind = "wavtokenizer"
    settings = WavTokenizerSettings

    @classmethod
    def from_settings(cls, settings: WavTokenizerSettings, *, device: str = "cpu") -> "WavTokenizerAudioCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        out = []
        for name, kwargs in VARIANTS.items():
            c = _config(kwargs)
            out.append(CodecVariant(model=name, sizes={
                "sample_rate": c.sampling_rate, "channels": c.audio_channels, "frame_rate": c.sampling_rate / c.hop_length,
                "hop_length": c.hop_length, "codebook_size": c.codebook_size, "n_q": 1, "layout": "frame_major"},
                note=NOTES[name]))
        return out

    def __init__(self, settings: WavTokenizerSettings, *, device: str = "cpu"):
        from transformers import WavTokenizerConfig, WavTokenizerModel

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "huggingface-cli download swiss-ai/wavtokenizer-large-unify-40token --local-dir /models/wavtokenizer"))
        if self._weights.kind == "path":
            net = load_local_model(WavTokenizerModel, self._weights, arch=settings.arch, where=WHERE,
                                   model_type="wavtokenizer", attention=False)
            self.name = f"wavtokenizer_{_folder_variant(net, settings.model, self._weights)}"
        else:
            variant = pick_variant(VARIANTS, settings.model, default=DEFAULT, where=WHERE)
            cfg = build_config(WavTokenizerConfig, arch_kwargs(VARIANTS[variant], SMALL, settings.arch,
                                                               config_cls=WavTokenizerConfig, where=WHERE), where=WHERE)
            seed = int(self._weights.seed)
            net = build_random(lambda: WavTokenizerModel(cfg), seed=seed, calibrate=_calibrate,
                               cache_key=random_cache_key("wavtokenizer", cfg, seed))
            self.name = f"wavtokenizer_{variant}"
        self._norm = _normalization(settings, self._weights, net)
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
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
        return 1

    @property
    def codebook_size(self) -> int:
        return int(self._net.encoder_model.quantizer.codebook.embed.shape[0])

    @property
    def hop_length(self) -> int:
        return int(self._net.hop_length)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def framing(self) -> dict[str, int]:
        # Every strided convolution pads its input to whole strides, so n samples give ceil(n / hop)
        # frames (checked against the model for lengths that are and are not multiples of the hop).
        return {"pad_to": self.hop_length, "extra": 0}

    def _params(self) -> dict[str, Any]:
        return {"arch": architecture(self._net.config), **self._norm.params(), "bandwidth_id": BANDWIDTH_ID,
                "padding": "the model's own (reflection) at encode_batch 1; zeros to the bucket at encode_batch > 1"}

    # ---- codes --------------------------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Each row scaled to the target peak, as WavTokenizerFeatureExtractor scales a clip: a float32 factor
        target / max(peak, 1e-10) times the float32 samples. A row's zero padding leaves its peak as it
        is, so the factor is the clip's own."""
        if not self._norm.on:
            return x
        target = 10.0 ** (self._norm.target_peak_dbfs / 20.0)
        peaks = x.abs().amax(dim=-1, keepdim=True).double().clamp_min(1e-10)
        return x * (target / peaks).float()

    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        # Batched: every layer treats the rows apart (convolutions, a per-row LSTM state, a nearest-code
        # search per frame), so with the pass shape fixed a row's codes are those of its item alone.
        codes = self._net.encode(self._normalize(x)).audio_codes  # (batch, 1, frames)
        return codes.transpose(1, 2).cpu().numpy().astype(np.int64)

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(codes.T.copy())[None].to(self.device)  # (1, 1, frames)
        return self._net.decode(audio_codes=t, bandwidth_id=BANDWIDTH_ID).audio_values[0]  # (1, frames * hop)


def _folder_variant(net, model: str | None, weights: WeightsSpec) -> str:
    """The variant a loaded folder is (by its hop); a `model:` that names another is refused."""
    hop = int(net.hop_length)
    named = {_config(v).hop_length: k for k, v in VARIANTS.items()}.get(hop, f"hop{hop}")
    if model is not None and model != named:
        pick_variant(VARIANTS, model, default=DEFAULT, where=WHERE)  # an unknown name: the list of known ones
        raise ConfigError(f"{WHERE}.model: {model!r}, but {weights.path} holds a WavTokenizer of hop {hop} ({named}); "
                          "drop model: or fix it")
    return named


def _normalization(settings: WavTokenizerSettings, weights: WeightsSpec, net) -> Normalization:
    """The settings' normalization, else the folder's preprocessor_config.json's, else off at -3 dB FS."""
    folder: dict[str, Any] = {}
    if weights.kind == "path" and (weights.path / "preprocessor_config.json").is_file():
        folder = _preprocessor_config(weights, net)
    on = settings.normalize_audio if settings.normalize_audio is not None else bool(folder.get("normalize_audio", False))
    peak = settings.target_peak_dbfs if settings.target_peak_dbfs is not None else \
        float(folder.get("target_peak_dB_FS", TARGET_PEAK_DBFS))
    return Normalization(on=bool(on), target_peak_dbfs=float(peak))


def _preprocessor_config(weights: WeightsSpec, net) -> dict[str, Any]:
    """A folder's feature-extractor settings, checked against the model it comes with."""
    path = weights.path / "preprocessor_config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{WHERE}.weights: {path} is not readable JSON: {exc}") from None
    for key, want in (("sampling_rate", int(net.config.sampling_rate)), ("hop_length", int(net.hop_length))):
        if key in data and int(data[key]) != want:
            raise WeightsError(f"{WHERE}.weights: {path} says {key} {data[key]}, the model in {weights.path} has {want}")
    return data


def _calibrate(net, seed: int) -> None:
    """Make random-weight codes spread over the codebook. Random SEANet weights give latents that barely
    move with the input (on the small architecture a per-dimension spread of 1e-3 around a mean of 0.3),
    so first the encoder's last convolution is rescaled to give, on a fixed signal, zero mean and unit
    spread per dimension; then the codebook is seeded with the latents of that signal. Both in float64
    (the encoder runs in float64 in place and back, exact), rounded to float16 precision; embed_avg and
    cluster_size follow, as the training EMA would leave them, so a saved folder is a consistent codebook."""
    cfg = net.config
    frames = min(int(cfg.codebook_size), 256) + 32
    x = calibration_signal(int(cfg.sampling_rate), int(cfg.audio_channels),
                           frames * int(net.hop_length) / int(cfg.sampling_rate), seed).double()
    encoder = net.encoder_model.encoder
    encoder.double()
    try:
        latents = encoder(x)[0].T  # (frames, hidden)
        _standardize_output(encoder.layers[-1], latents.mean(0), latents.std(0).clamp_min(1e-12))
        latents = encoder(x)[0].T.contiguous()
    finally:
        encoder.float()
    book = seed_codebook(latents, int(cfg.codebook_size), torch.Generator().manual_seed(seed + 1))
    codebook = net.encoder_model.quantizer.codebook
    codebook.embed.copy_(book)
    codebook.embed_avg.copy_(book)
    codebook.cluster_size.fill_(1.0)


def _standardize_output(layer, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rescale a WavTokenizerConv1d so that its output channel c becomes (out_c - mean_c) / std_c: the
    per-channel gain is the weight-norm magnitude (or, with time_group_norm, the GroupNorm's affine
    weight), the shift its bias."""
    if hasattr(layer, "norm"):  # time_group_norm: the conv's output is normalized, then scaled and shifted
        gain, bias = layer.norm.weight, layer.norm.bias
    elif hasattr(layer.conv, "parametrizations"):  # weight_norm: weight = g * v / |v|, g per output channel
        gain, bias = layer.conv.parametrizations.weight.original0, layer.conv.bias
    else:
        gain, bias = layer.conv.weight_g, layer.conv.bias
    shape = (-1,) + (1,) * (gain.dim() - 1)
    gain.copy_(round_to_half((gain.double() / std.view(shape)).float()))
    bias.copy_(round_to_half(((bias.double() - mean) / std).float()))
