"""X-codec2 (`transformers.Xcodec2Model`) as the audio codec: 16 kHz mono, 50 Hz frames, one finite
scalar quantizer (FSQ) code per frame, 4^8 = 65,536 codes. FSQ layout (a single level). The model
fuses a semantic encoder (Wav2Vec2-BERT over log-mel features) with an acoustic one; the features come
from `Xcodec2FeatureExtractor`, whose settings are recorded in the token space. The extractor pads a
clip by one sample and then to whole frames, so a clip of n samples has n // 320 + 1 frames. With
encode_batch > 1 a clip of u frames is zero-padded to bucket(u) * 320 - 1 samples first (the extractor
then frames it as bucket(u) frames); its mel features are normalized over the padded clip, so the
padding changes them, but only as a function of the clip's own length: `padding_rule` states it.

Weights: a local copy of HKUSTAudio/xcodec2 in the transformers format (config.json,
model.safetensors, preprocessor_config.json), or `random:SEED` (+ `arch: small`). With random
weights the FSQ projection is rescaled from a fixed calibration signal, else every frame rounds to the
same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uti.codecs.base import CodecVariant
from uti.codecs.hf_common import (BatchedAudioCodec, HFAudioSettings, arch_kwargs, architecture, build_config,
                                  build_random, check_kind, fingerprint, load_local_model, pick_variant,
                                  random_cache_key, require_random_or_folder)
from uti.codecs.weights import calibration_signal, parse_weights, resolve_device, round_to_half
from uti.errors import WeightsError
from uti.quiet import no_loading_bars
from uti.token_space import LayoutSpec

VARIANTS: dict[str, dict[str, Any]] = {"xcodec2": {}}  # Xcodec2Config's defaults are HKUSTAudio/xcodec2's
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
             head_dim=32, encoder_hidden_size=8, downsampling_ratios=[8, 8, 5], quantization_dim=128,
             quantization_levels=[4, 4, 4, 4],
             semantic_model_config=dict(model_type="wav2vec2-bert", hidden_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=128, output_hidden_size=64,
                                        conv_depthwise_kernel_size=3))
# Xcodec2FeatureExtractor keys that say nothing about the features it computes
NOT_FEATURES = {"feature_extractor_type", "processor_class", "return_attention_mask", "padding_side"}
WHERE = "audio"


@dataclass(kw_only=True, frozen=True)
class Xcodec2Settings(HFAudioSettings):
    """`audio: {kind: xcodec2, weights: ..., arch: small}`"""

    kind: str = "xcodec2"

    def __post_init__(self) -> None:
        check_kind(self, "xcodec2")


class Xcodec2AudioCodec(BatchedAudioCodec):
    kind = "xcodec2"
    settings = Xcodec2Settings
    feature_keys: tuple[str, ...] = ("input_values", "input_features")  # what the extractor gives `encode`

    @classmethod
    def from_settings(cls, settings: Xcodec2Settings, *, device: str = "cpu") -> "Xcodec2AudioCodec":
        return cls(settings, device=device)

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        from transformers import Xcodec2Config

        c = Xcodec2Config(**VARIANTS["xcodec2"])
        return [CodecVariant(model="xcodec2", sizes={
            "sample_rate": c.sampling_rate, "channels": 1, "frame_rate": c.sampling_rate / c.hop_length,
            "codebook_size": int(np.prod(c.quantization_levels)), "n_q": 1, "layout": "fsq"},
            note="HKUSTAudio/xcodec2 (transformers format); FSQ levels " + "x".join(map(str, c.quantization_levels)))]

    def __init__(self, settings: Xcodec2Settings, *, device: str = "cpu"):
        from transformers import Xcodec2Config, Xcodec2Model
        from transformers.models.xcodec2.feature_extraction_xcodec2 import Xcodec2FeatureExtractor

        self._weights = parse_weights(settings.weights, where=f"{WHERE}.weights")
        require_random_or_folder(self._weights, where=WHERE, download_hint=(
            "huggingface-cli download HKUSTAudio/xcodec2-hf --local-dir /models/xcodec2"))
        pick_variant(VARIANTS, settings.model, default="xcodec2", where=WHERE)
        if self._weights.kind == "path":
            net = load_local_model(Xcodec2Model, self._weights, arch=settings.arch, where=WHERE, model_type="xcodec2",
                                   attention=True)
            features = folder_features(Xcodec2FeatureExtractor, self._weights.path, where=WHERE,
                                       hop_length=net.config.hop_length, sampling_rate=net.config.sampling_rate)
        else:
            cfg = build_config(Xcodec2Config, arch_kwargs(VARIANTS["xcodec2"], SMALL, settings.arch,
                                                          config_cls=Xcodec2Config, where=WHERE), where=WHERE)
            features = Xcodec2FeatureExtractor(hop_length=cfg.hop_length, sampling_rate=cfg.sampling_rate)
            seed = int(self._weights.seed)

            def calibrate(model, seed_: int) -> None:
                calibrate_fsq(model, features, seed_, sample_rate=cfg.sampling_rate)

            net = build_random(lambda: Xcodec2Model(cfg), seed=seed, calibrate=calibrate,
                               cache_key=random_cache_key("xcodec2", cfg, seed))
        check_features(features, hop_length=net.config.hop_length, sampling_rate=net.config.sampling_rate, where=WHERE)
        self.name = "xcodec2"
        self._features = features
        self.device = resolve_device(device)
        self._net = net.eval().to(self.device)
        self._fingerprint = fingerprint(self._net)

    @property
    def sample_rate(self) -> int:
        return int(self._net.config.sampling_rate)

    @property
    def channels(self) -> int:
        return 1

    @property
    def n_q(self) -> int:
        return 1

    @property
    def codebook_size(self) -> int:
        return int(self._net.quantizer.quantizer.codebook.shape[0])

    @property
    def hop_length(self) -> int:
        return int(self._net.config.hop_length)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec.fsq()

    def framing(self) -> dict[str, int]:
        return {"pad_to": self.hop_length, "extra": 1}  # the feature extractor adds one sample first

    def _params(self) -> dict[str, Any]:
        feats = {k: v for k, v in sorted(self._features.to_dict().items()) if k not in NOT_FEATURES}
        return {"arch": architecture(self._net.config), "features": architecture(feats),
                "fsq_levels": [int(v) for v in self._net.config.quantization_levels]}

    def _inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The extractor's inputs for a (batch, 1, length) pass, row by row: its mel features are normalized
        over the whole row, so each row's features are those of that item (with its padding) alone."""
        rows = [self._features(audio=x[j, 0].cpu().numpy(), sampling_rate=self.sample_rate, return_tensors="pt")
                for j in range(x.shape[0])]
        return {key: torch.cat([f[key] for f in rows]).to(self.device) for key in self.feature_keys}

    def _encode_pass(self, x: torch.Tensor) -> np.ndarray:
        codes = self._net.encode(**self._inputs(x)).audio_codes  # (batch, 1, frames)
        return codes.transpose(1, 2).cpu().numpy().astype(np.int64)

    def _decode_codes(self, codes: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(codes.T.copy())[None].to(self.device)  # (1, 1, frames)
        return self._net.decode(audio_codes=t).audio_values[0]


def folder_features(features_cls: type, folder: Path, *, where: str, hop_length: int, sampling_rate: int):
    """The feature extractor a model folder brings (preprocessor_config.json), else `features_cls` with its
    defaults at the model's hop and rate."""
    if not (folder / "preprocessor_config.json").is_file():
        return features_cls(hop_length=int(hop_length), sampling_rate=int(sampling_rate))
    try:
        with no_loading_bars():
            return features_cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{where}.weights: {folder}/preprocessor_config.json: {exc}") from None


def check_features(features: Any, *, hop_length: int, sampling_rate: int, where: str) -> None:
    """The extractor pads the waveform by the encoder's hop at the encoder's rate: any other would change
    the frames."""
    if int(features.hop_length) != int(hop_length) or int(features.sampling_rate) != int(sampling_rate):
        raise WeightsError(f"{where}.weights: the feature extractor frames {features.sampling_rate} Hz audio by "
                           f"{features.hop_length}, the model by {hop_length} at {sampling_rate} Hz")


def calibrate_fsq(net, features, seed: int, *, sample_rate: int,
                  keys: tuple[str, ...] = ("input_values", "input_features")) -> None:
    """Rescale the FSQ input projection so that, on a fixed signal, every FSQ dimension spreads over its
    levels (random weights otherwise put every frame on one code). Computed in float64, rounded to
    float16 precision."""
    x = calibration_signal(int(sample_rate), 1, 4.0, seed)[0, 0]
    f = features(audio=x.numpy(), sampling_rate=int(sample_rate), return_tensors="pt")
    captured: dict[str, torch.Tensor] = {}

    def keep_input(module, inputs, output) -> None:  # returns None: the output stays as it is
        captured["h"] = inputs[0].detach()

    hook = net.quantizer.project_in.register_forward_hook(keep_input)
    try:
        net.encode(**{key: f[key] for key in keys})
    finally:
        hook.remove()
    h = captured["h"].reshape(-1, captured["h"].shape[-1]).double()  # (frames, quantization_dim)
    lin = net.quantizer.project_in
    out = h @ lin.weight.double().T + lin.bias.double()
    mean, std = out.mean(0), out.std(0).clamp_min(1e-12)
    lin.weight.copy_(round_to_half((lin.weight.double() / std[:, None]).float()))
    lin.bias.copy_(round_to_half(((lin.bias.double() - mean) / std).float()))
