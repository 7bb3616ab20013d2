"""Codec adapters: one small abstract base per modality (base.py), one module per adapter, and the
registry (registry.py) that finds them through the `uti.codecs` entry points."""

from uti.codecs.base import AudioCodec, CodecVariant, EncodedAudio, ImageCodec, TextCodec
from uti.codecs.registry import (build_audio_codec, build_image_codec, build_text_codec, codec_class,
                                 installed_codecs)

__all__ = [
    "AudioCodec", "CodecVariant", "EncodedAudio", "ImageCodec", "TextCodec",
    "build_audio_codec", "build_image_codec", "build_text_codec", "codec_class", "installed_codecs",
]
