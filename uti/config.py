"""The codec configuration (`uti.yaml` or a built-in preset), as typed keyword-only dataclasses.

A config names each modality's adapter, its weights (`random:SEED`, a local path, or `pretrained`)
and its settings. The built-in preset `default` needs no files and no network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from uti.errors import ConfigError
from uti.strict import from_dict, to_dict


@dataclass(kw_only=True, frozen=True)
class TextConfig:
    kind: str = "byte"  # "byte" (file-free, 256 IDs) or "hf" (a local Hugging Face tokenizer directory)
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("byte", "hf"):
            raise ConfigError(f"text.kind: {self.kind!r} is not one of 'byte', 'hf'")
        if self.kind == "hf" and not self.path:
            raise ConfigError("text.path: kind 'hf' needs the path of a local tokenizer directory")


@dataclass(kw_only=True, frozen=True)
class ImageArch:
    """diffusers.VQModel architecture used when weights are `random:SEED` (a directory brings its own)."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    latent_channels: int = 32
    num_vq_embeddings: int = 1024
    vq_embed_dim: int = 32
    norm_num_groups: int = 16


@dataclass(kw_only=True, frozen=True)
class ImageConfig:
    kind: str = "vqgan"
    weights: str = "random:0"  # "random:SEED" or a local diffusers VQModel directory
    proc_size: int = 64  # images are resized (short side) and center-cropped to proc_size x proc_size
    arch: ImageArch = field(default_factory=ImageArch)

    def __post_init__(self) -> None:
        if self.kind != "vqgan":
            raise ConfigError(f"image.kind: {self.kind!r} is not one of 'vqgan'")
        if self.proc_size <= 0:
            raise ConfigError(f"image.proc_size: must be positive, got {self.proc_size}")


@dataclass(kw_only=True, frozen=True)
class AudioConfig:
    kind: str = "encodec"
    model: str = "encodec_24khz"  # or "encodec_48khz"
    bandwidth: float = 6.0  # kbps; n_q is read from the model for this bandwidth
    weights: str = "random:0"  # "random:SEED", "pretrained" (torch hub cache, then download), or a .th path

    def __post_init__(self) -> None:
        if self.kind != "encodec":
            raise ConfigError(f"audio.kind: {self.kind!r} is not one of 'encodec'")
        if self.model not in ("encodec_24khz", "encodec_48khz"):
            raise ConfigError(f"audio.model: {self.model!r} is not one of 'encodec_24khz', 'encodec_48khz'")


@dataclass(kw_only=True, frozen=True)
class LimitsConfig:
    """Inputs beyond these are refused per sample (recorded in errors.jsonl), never silently cut."""

    max_audio_seconds: float = 600.0
    min_audio_samples: int = 2
    max_channels: int = 2
    min_sample_rate: int = 4000
    max_sample_rate: int = 192000
    max_image_pixels: int = 64_000_000


@dataclass(kw_only=True, frozen=True)
class UTIConfig:
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    num_reserved_specials: int = 50  # spare special slots so new task tags never shift other ranges
    device: str = "cpu"  # "cpu", "cuda", or "auto" (cuda when available)

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self, **changes) -> "UTIConfig":
        return dataclasses.replace(self, **changes)


PRESETS = ("default",)


def load_config(spec: str | Path | None = None) -> UTIConfig:
    """Load a config from a preset name (`default`) or a YAML file path."""
    if spec is None or str(spec) in PRESETS:
        name = "default" if spec is None else str(spec)
        text = resources.files("uti.presets").joinpath(f"{name}.yaml").read_text()
        return config_from_yaml(text, where=f"preset {name!r}")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"config {str(spec)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file"
        )
    return config_from_yaml(path.read_text(), where=str(path))


def config_from_yaml(text: str, *, where: str = "config") -> UTIConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    return from_dict(UTIConfig, data, where=where)
