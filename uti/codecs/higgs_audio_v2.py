"""The Higgs Audio v2 tokenizer (Boson AI; `transformers.HiggsAudioV2TokenizerModel`) as the audio codec:
24 kHz mono, 25 Hz frames (hop 960), 8 residual levels of 1024 codes; `bandwidth` (0.5, 1, 1.5, 2 kbps:
0.25 kbps per level at 25 Hz) uses 2, 4, 6 or 8 of them. Frame-major layout. transformers builds the
model modularly from X-Codec (uti.codecs.xcodec, whose adapter this one extends): a DAC acoustic encoder
at 24 kHz and a HuBERT semantic branch at 16 kHz, joined per frame, quantized by an RVQ whose levels
project the joined vector into a 64-dim codebook space and back.

Semantic preprocessing (recorded in the token space): the raw waveform, not normalized, resampled from
the model's rate to `semantic_sample_rate` with torchaudio.functional.resample (its defaults), zero-padded
by 160 samples on each side (a constant of the transformers source, not a config key), into HuBERT;
the mean of all hidden states at 50 Hz keeps every `semantic_downsample_factor`-th (2nd) frame.

Framing: a clip is zero-padded on the right to whole frames of 960 samples (as the tokenizer's
DacFeatureExtractor does), so n samples give ceil(n / 960) frames; on whole frames both branches give
exactly n / 960 frames and the model pads nothing itself. Measured without that padding it gives
floor((n + 841) / 960) frames (every 2nd of HuBERT's frames over ceil(2n / 3) resampled samples padded
by 160 each side), so a last partial frame under 119 samples is dropped and a clip under 119 samples
fails.

Weights: a local copy of bosonai/higgs-audio-v2-tokenizer in the transformers format, or `random:SEED`
(+ `arch: small`); random codebooks are seeded as X-Codec's are (uti.codecs.xcodec.calibrate_rvq).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uti.codecs.hf_common import HFAudioSettings, check_kind
from uti.codecs.xcodec import (SEMANTIC_FEATURES, SMALL_ACOUSTIC, SMALL_SEMANTIC, XcodecFamilyCodec,
                               check_bandwidth_setting)

MODEL = "higgs_audio_v2"
# bosonai/higgs-audio-v2-tokenizer's config.json: HiggsAudioV2TokenizerConfig's defaults but for these
# (its semantic model is HuBERT base: HubertConfig's defaults)
ACOUSTIC = dict(model_type="dac", encoder_hidden_size=64, decoder_hidden_size=1024, hidden_size=256,
                downsampling_ratios=[8, 5, 4, 2, 3], upsampling_ratios=[8, 5, 4, 2, 3])
VARIANTS: dict[str, dict[str, Any]] = {MODEL: dict(target_bandwidths=[0.5, 1, 1.5, 2], acoustic_model_config=ACOUSTIC)}
# 64 codes (6 bits) at 25 Hz: 0.15 kbps per level, so 0.3 and 0.6 kbps give 2 and 4 levels
SMALL = dict(codebook_size=64, codebook_dim=16, target_bandwidths=[0.3, 0.6],
             acoustic_model_config={**ACOUSTIC, **SMALL_ACOUSTIC, "encoder_hidden_size": 4},
             semantic_model_config=SMALL_SEMANTIC)
# HiggsAudioV2TokenizerModel._extract_semantic_features pads the resampled waveform by this many
# samples on each side: a literal in the transformers source (tests measure it on the model)
SEMANTIC_PAD = 160


@dataclass(kw_only=True, frozen=True)
class HiggsAudioV2Settings(HFAudioSettings):
    """`audio: {kind: higgs_audio_v2, bandwidth: 2.0, weights: random:0 | /models/higgs-audio-v2-tokenizer,
    arch: small}`"""

    kind: str = "higgs_audio_v2"
    bandwidth: float | None = None  # kbps, one of the model's target_bandwidths; None: its highest (all levels)

    def __post_init__(self) -> None:
        check_kind(self, "higgs_audio_v2")
        check_bandwidth_setting(self.bandwidth)

    def promised_sizes(self) -> dict[str, Any]:
        return {} if self.bandwidth is None else {"bandwidth": float(self.bandwidth)}


class HiggsAudioV2AudioCodec(XcodecFamilyCodec):
    kind = "higgs_audio_v2"
    settings = HiggsAudioV2Settings
    model_type = "higgs_audio_v2_tokenizer"
    variants_table = VARIANTS
    small = SMALL
    default_model = MODEL
    download_hint = ("huggingface-cli download bosonai/higgs-audio-v2-tokenizer "
                     "--local-dir /models/higgs-audio-v2-tokenizer")

    @classmethod
    def model_classes(cls) -> tuple[type, type]:
        from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

        return HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    @classmethod
    def variant_name(cls, model: str) -> str:
        return model

    @classmethod
    def variant_note(cls, model: str, config) -> str:
        return (f"bosonai/higgs-audio-v2-tokenizer; HuBERT at {config.semantic_sample_rate} Hz; "
                "bandwidth (kbps) sets n_q")

    def semantic_preprocessing(self) -> dict[str, Any]:
        cfg = self._net.config
        rate, semantic_rate = int(cfg.sample_rate), int(cfg.semantic_sample_rate)
        resample = None if rate == semantic_rate else (
            f"torchaudio.functional.resample {rate} -> {semantic_rate} Hz (its defaults: sinc_interp_hann, "
            "lowpass_filter_width 6, rolloff 0.99)")
        return {"model_type": cfg.semantic_model_config.model_type, "sample_rate": semantic_rate,
                "resample": resample, "normalize": False, "pad_each_side": SEMANTIC_PAD,
                "features": SEMANTIC_FEATURES, "frame_step": int(cfg.semantic_downsample_factor)}
