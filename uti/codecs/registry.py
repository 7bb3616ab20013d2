"""Build codec adapters from the config. Heavy imports happen only for the modalities asked for."""

from __future__ import annotations

from uti.codecs.base import AudioCodec, ImageCodec, TextCodec
from uti.config import AudioConfig, ImageConfig, TextConfig


def build_audio_codec(cfg: AudioConfig, *, device: str = "cpu") -> AudioCodec:
    from uti.codecs.encodec_audio import EncodecAudioCodec

    return EncodecAudioCodec(model=cfg.model, bandwidth=cfg.bandwidth, weights=cfg.weights, device=device)


def build_image_codec(cfg: ImageConfig, *, device: str = "cpu") -> ImageCodec:
    from uti.codecs.vq_image import VQImageCodec

    return VQImageCodec(cfg, device=device)


def build_text_codec(cfg: TextConfig) -> TextCodec:
    from uti.codecs.text import ByteTextCodec, HFTextCodec

    return ByteTextCodec() if cfg.kind == "byte" else HFTextCodec(cfg.path)
