"""NeuCodec (`transformers.NeuCodecModel`, Neuphonic) as the audio codec: 16 kHz mono in, 24 kHz out, 50 Hz
frames, one finite scalar quantizer (FSQ) code per frame, 4^8 = 65,536 codes. FSQ layout (a single level).
The model is X-codec2's (transformers builds it from Xcodec2's modules): a semantic encoder (Wav2Vec2-BERT
over log-mel features from `NeuCodecFeatureExtractor`, whose settings the token space records) fused with
an acoustic one, and a decoder that synthesizes at its own, higher rate. So this adapter is X-codec2's
with NeuCodec's rates, hop and framing.

Framing (measured on both branches): the extractor pads a clip of n samples by one sample and then to whole
320-sample frames, which gives the acoustic branch n // 320 + 1 frames; the mel features of that padded
clip (400-sample windows every 160 samples, taken in pairs) give the semantic branch one frame less, and
the model keeps the shorter branch: n // 320 frames. A clip needs 320 samples (20 ms); the last n % 320
samples have no frame of their own. The token space records this as framing {pad_to: 320, extra: -319}
(ceil((n - 319) / 320) = n // 320), the rule verify applies without the codec. With encode_batch > 1 a
clip of u frames is zero-padded to bucket(u) * 320 + 319 samples, which the extractor frames as bucket(u)
frames; as in X-codec2 the mel features are normalized over the padded clip, a function of the clip's own
length (`padding_rule`).

Decode: F frames give F * 480 samples at 24 kHz (the decoder's hop at its rate), the clip's duration
rounded down to whole frames: `decoded_samples`.

Weights: a local copy of neuphonic/neucodec in the transformers format (config.json, model.safetensors,
preprocessor_config.json), or `random:SEED` (+ `arch: small`); random FSQ weights get X-codec2's
calibration. neuphonic/distill-neucodec is not offered: its DistilHuBERT semantic encoder reads the
waveform and its acoustic encoder is SQCodec's, neither of which NeuCodecModel can build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from uti.codecs.base import CodecVariant, EncodedAudio
from uti.codecs.hf_common import (HFAudioSettings, arch_kwargs, build_config, build_random, check_kind, fingerprint,
                                  load_local_model, pick_variant, random_cache_key, require_random_or_folder)
from uti.codecs.weights import parse_weights, resolve_device
from uti.codecs.xcodec2 import SMALL as XCODEC2_SMALL
from uti.codecs.xcodec2 import Xcodec2AudioCodec, calibrate_fsq, check_features, folder_features
from uti.errors import ConfigError, WeightsError

VARIANTS: dict[str, dict[str, Any]] = {"neucodec": {}}  # NeuCodecConfig's defaults are neuphonic/neucodec's
# X-codec2's small transformer and semantic model, with NeuCodec's own downsampling ratios (the real
# 2*2*4*4*5 = 320, so the acoustic branch frames audio as the real one does)
SMALL = {**XCODEC2_SMALL, "downsampling_ratios": [2, 2, 4, 4, 5], "encoder_hidden_size": 4}
WHERE = "audio"


@dataclass(kw_only=True, frozen=True)
class NeuCodecSettings(HFAudioSettings):
    """`audio: {kind: neucodec, weights: ..., arch: small}`"""

    kind: str = "neucodec"

    def __post_init__(self) -> None:
        check_kind(self, "neucodec")


class NeuCodecAudioCodec(Xcodec2AudioCodec):
    kind = "neucodec"
    settings = NeuCodecSettings
    # the semantic branch's mask too, as the model's forward takes it (all ones for a clip alone)
    feature_keys = ("input_values", "input_features", "input_features_mask")

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import NeuCodecConfig

        c = NeuCodecConfig(**VARIANTS["neucodec"])
        return [CodecVariant(model="neucodec", sizes={
            "sample_rate": c.input_sampling_rate, "output_sample_rate": c.output_sampling_rate, "channels": 1,
            "frame_rate": c.input_sampling_rate / c.encoder_hop_length, "hop_length": c.encoder_hop_length,
            "codebook_size": int(np.prod(c.quantization_levels)), "n_q": 1, "layout": "fsq"},
            note=f"neuphonic/neucodec (transformers format); decodes at {c.output_sampling_rate} Hz; FSQ levels "
                 + "x".join(map(str, c.quantization_levels)))]

    def __init__(self, settings: NeuCodecSettings, *, device: str = "cpu"):
        from transformers import NeuCodecConfig, NeuCodecModel
        from transformers.models.neucodec.feature_extraction_neucodec import NeuCodecFeatureExtractor

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "huggingface-cli download neuphonic/neucodec --local-dir /models/neucodec"))
        pick_variant(VARIANTS, settings.model, default="neucodec", where=WHERE)
        if self._weights.kind == "path":
            net = load_local_model(NeuCodecModel, self._weights, arch=settings.arch, where=WHERE, model_type="neucodec",
                                   attention=True)
            check_rates(net.config, where=f"{WHERE}.weights: {self._weights.path}", error=WeightsError)
            features = folder_features(NeuCodecFeatureExtractor, self._weights.path, where=WHERE,
                                       hop_length=net.hop_length, sampling_rate=net.config.input_sampling_rate)
        else:
            cfg = build_config(NeuCodecConfig, arch_kwargs(VARIANTS["neucodec"], SMALL, settings.arch,
                                                           config_cls=NeuCodecConfig, where=WHERE), where=WHERE)
            check_rates(cfg, where=f"{WHERE}.arch", error=ConfigError)
            features = NeuCodecFeatureExtractor(hop_length=cfg.encoder_hop_length, sampling_rate=cfg.input_sampling_rate)
            seed = int(self._weights.seed)

            def calibrate(model, seed_: int) -> None:
                calibrate_fsq(model, features, seed_, sample_rate=cfg.input_sampling_rate, keys=self.feature_keys)

            net = build_random(lambda: NeuCodecModel(cfg), seed=seed, calibrate=calibrate,
                               cache_key=random_cache_key("neucodec", cfg, seed))
        # the model's own encoder hop (config.hop_length is the decoder's, at the output rate)
        check_features(features, hop_length=net.hop_length, sampling_rate=net.config.input_sampling_rate, where=WHERE)
        self.name = "neucodec"
        self._features = features
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        self._fingerprint = fingerprint(self._net)

    @property
    def sample_rate(self) -> int:
        return int(self._net.config.input_sampling_rate)

    @property
    def output_sample_rate(self) -> int:
        return int(self._net.config.output_sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(self._net.hop_length)  # config.encoder_hop_length: samples per frame at sample_rate

    def framing(self) -> dict[str, int]:
        # n // hop frames (the semantic branch's whole frames, see the module doc) as the recorded rule writes it
        return {"pad_to": self.hop_length, "extra": 1 - self.hop_length}

    def decoded_samples(self, n_samples: int) -> int:
        """The clip's duration at the output rate, no more than its frames synthesize (the decoder's hop per
        frame): the model drops the last n % hop samples when it frames a clip."""
        per_frame = int(self._net.config.hop_length)
        return min(super().decoded_samples(n_samples), self.expected_frames(n_samples) * per_frame)

    def encode(self, clips) -> list[EncodedAudio]:
        for i, clip in enumerate(clips):
            n = clip.shape[-1] if isinstance(clip, torch.Tensor) and clip.dim() == 2 else 0
            if 0 < n < self.hop_length:
                raise ValueError(f"clip {i}: {n} samples; {self.name} frames a clip by whole {self.hop_length}-sample "
                                 f"frames (n // {self.hop_length}), so it needs at least {self.hop_length} samples "
                                 f"({1000 * self.hop_length / self.sample_rate:g} ms at {self.sample_rate} Hz)")
        return super().encode(clips)


def check_rates(config: Any, *, where: str, error: type[Exception]) -> None:
    """The decoder synthesizes config.hop_length samples per frame at the output rate: that must be exactly
    one encoder frame's duration, else decoded lengths drift from the clip's."""
    enc, dec = int(config.encoder_hop_length), int(config.hop_length)
    rate_in, rate_out = int(config.input_sampling_rate), int(config.output_sampling_rate)
    if dec * rate_in != enc * rate_out:
        raise error(f"{where}: the decoder's {dec} samples per frame at {rate_out} Hz are not the encoder's "
                    f"{enc} at {rate_in} Hz; the downsampling ratios' product times {rate_out}/{rate_in} must be "
                    "a whole number")
