"""Codec adapters: one small abstract base per modality (base.py) and one module per adapter."""

from uti.codecs.base import AudioCodec, EncodedAudio, ImageCodec, TextCodec
from uti.codecs.registry import build_audio_codec, build_image_codec, build_text_codec

__all__ = [
    "AudioCodec", "EncodedAudio", "ImageCodec", "TextCodec",
    "build_audio_codec", "build_image_codec", "build_text_codec",
]
