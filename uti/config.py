"""The codec configuration (`uti.yaml` or a built-in preset), as typed keyword-only dataclasses.

A config names each modality's adapter, its weights (`random:SEED`, a local path, or `pretrained`)
and its settings. A modality the config does not name (or names with `kind: none`) has no codec and
no range in the token space. The built-in preset `default` names all three and needs no files and no
network.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from uti.errors import ConfigError
from uti.modalities import TOKEN_SPACE_ORDER
from uti.strict import from_dict, to_dict


@dataclass(kw_only=True, frozen=True)
class CodecSettings:
    """A media section of uti.yaml: `kind` picks the codec adapter (see `uti tokenspace codecs`), the other
    keys are that adapter's settings. Each adapter names its own subclass (`AudioCodec.settings`)."""

    kind: str
    # Items per forward pass (uti.codecs.batching); None: 1 on a CPU, the GPU default elsewhere. It changes
    # numerics, not what a token means, so it is not in the token-space ID (the shard header records it).
    encode_batch: int | None = None

    def promised_sizes(self) -> dict[str, Any]:
        """Sizes this config fixes (e.g. n_q, proc_size), compared with what the loaded model reports."""
        return {}


@dataclass(kw_only=True, frozen=True)
class AudioSettings(CodecSettings):
    """Base of every audio codec's settings."""


@dataclass(kw_only=True, frozen=True)
class ImageSettings(CodecSettings):
    """Base of every image codec's settings."""


@dataclass(kw_only=True, frozen=True)
class TextConfig:
    kind: str = "byte"  # "byte" (file-free, 256 IDs) or "hf" (a local Hugging Face tokenizer directory)
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("byte", "hf"):
            raise ConfigError(f"text.kind: {self.kind!r} is not one of 'byte', 'hf' (or 'none': no text codec)")
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
class ImageConfig(ImageSettings):
    """`image: {kind: vqgan}`: the VQGAN-family tokenizer on diffusers.VQModel."""

    kind: str = "vqgan"
    weights: str = "random:0"  # "random:SEED" or a local diffusers VQModel directory
    proc_size: int = 64  # images are resized (short side) and center-cropped to proc_size x proc_size
    arch: ImageArch = field(default_factory=ImageArch)

    def __post_init__(self) -> None:
        if self.kind != "vqgan":
            raise ConfigError(f"image.kind: ImageConfig holds the settings of kind 'vqgan', not {self.kind!r}")
        if self.proc_size <= 0:
            raise ConfigError(f"image.proc_size: must be positive, got {self.proc_size}")

    def promised_sizes(self) -> dict[str, Any]:
        return {"proc_size": [self.proc_size, self.proc_size]}


@dataclass(kw_only=True, frozen=True)
class AudioConfig(AudioSettings):
    """`audio: {kind: encodec}`: EnCodec (the `encodec` package)."""

    kind: str = "encodec"
    model: str = "encodec_24khz"  # or "encodec_48khz"
    bandwidth: float = 6.0  # kbps; n_q is read from the model for this bandwidth
    weights: str = "random:0"  # "random:SEED", "pretrained" (torch hub cache, then download), or a .th path

    def __post_init__(self) -> None:
        if self.kind != "encodec":
            raise ConfigError(f"audio.kind: AudioConfig holds the settings of kind 'encodec', not {self.kind!r}")
        if self.model not in ("encodec_24khz", "encodec_48khz"):
            raise ConfigError(f"audio.model: {self.model!r} is not one of 'encodec_24khz', 'encodec_48khz'")

    def promised_sizes(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth}


@dataclass(kw_only=True, frozen=True)
class LimitsConfig:
    """Inputs beyond these are refused per sample (recorded in errors.jsonl), never silently cut."""

    max_audio_seconds: float = 600.0
    min_audio_samples: int = 2
    max_channels: int = 2
    min_sample_rate: int = 4000
    max_sample_rate: int = 768000  # 352.8 and 384 kHz masters are good audio; they are resampled like any other
    max_image_pixels: int = 64_000_000

    def __post_init__(self) -> None:
        # A limit no input can meet would turn every sample into an error row: refuse it up front.
        for name in ("max_audio_seconds", "min_audio_samples", "max_channels", "min_sample_rate",
                     "max_sample_rate", "max_image_pixels"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"limits.{name}: must be a finite number > 0, got {value!r} (no sample could "
                                  "meet it)")
        if self.min_sample_rate > self.max_sample_rate:
            raise ConfigError(f"limits.min_sample_rate ({self.min_sample_rate}) is above limits.max_sample_rate "
                              f"({self.max_sample_rate}): no sample rate could meet both")


# uti.config.MODALITIES is the token-space order (uti.modalities says why): uti.cli_commands prints its
# notes in the order of the ranges.
MODALITIES = TOKEN_SPACE_ORDER
NO_CODEC = "none"  # `kind: none` says explicitly that a modality has no codec (and no range)
DEFAULT_KINDS = {"image": "vqgan", "audio": "encodec"}  # the kind of a section that names none
BUILTIN_SETTINGS: dict[tuple[str, str], type[CodecSettings]] = {("image", "vqgan"): ImageConfig,
                                                                 ("audio", "encodec"): AudioConfig}


def media_settings(modality: str, section: Mapping[str, Any], *, where: str) -> CodecSettings:
    """A media section of uti.yaml -> the typed settings of its `kind` (default: DEFAULT_KINDS). Kinds
    other than the built-in defaults are looked up in the codec registry (the `uti.codecs` entry points)."""
    kind = section.get("kind", DEFAULT_KINDS[modality])
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.kind: expected a string, got {kind!r}")
    cls = BUILTIN_SETTINGS.get((modality, kind))
    if cls is None:
        from uti.codecs.registry import settings_class

        cls = settings_class(modality, kind, where=f"{where}.kind")
    return from_dict(cls, {**section, "kind": kind}, where=where)


@dataclass(kw_only=True, frozen=True)
class UTIConfig:
    # None: no codec for the modality, so the token space has no range for it (see config_from_dict).
    # A media section given as a plain mapping (YAML, job.json) becomes the settings of its `kind`.
    text: TextConfig | None = None
    image: dict[str, Any] | ImageSettings | None = None
    audio: dict[str, Any] | AudioSettings | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    num_reserved_specials: int = 50  # spare special slots so new task tags never shift other ranges
    device: str = "cpu"  # "cpu", "cuda", or "auto" (cuda when available)

    def __post_init__(self) -> None:
        for modality, base in (("image", ImageSettings), ("audio", AudioSettings)):
            section = getattr(self, modality)
            if isinstance(section, Mapping):
                if section.get("kind") == NO_CODEC:
                    raise ConfigError(f"config.{modality}: kind 'none' means no section at all; use None")
                object.__setattr__(self, modality, media_settings(modality, section, where=f"config.{modality}"))
            elif section is not None and not isinstance(section, base):
                raise ConfigError(f"config.{modality}: expected {base.__name__} settings, got {type(section).__name__}")
        if not self.modalities:
            raise ConfigError("the codec config names no codec: give at least one of text:, image:, audio: "
                              "(e.g. text: {kind: byte}), or use the preset 'default'")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities that have a codec, in token-space order."""
        return tuple(m for m in TOKEN_SPACE_ORDER if getattr(self, m) is not None)

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self, **changes) -> "UTIConfig":
        return dataclasses.replace(self, **changes)


def preset_names() -> tuple[str, ...]:
    """The built-in presets: one uti/presets/NAME.yaml each."""
    return tuple(sorted(f.name[: -len(".yaml")] for f in resources.files("uti.presets").iterdir()
                        if f.name.endswith(".yaml")))


PRESETS = preset_names()


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
    return config_from_dict(data, where=where)


def config_from_dict(data: object, *, where: str = "config") -> UTIConfig:
    """A config from plain data (YAML, job.json). A modality that is absent, null or `{kind: none}` has
    no codec; `kind: none` takes no other settings (they would be silently unused)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    for modality in TOKEN_SPACE_ORDER:
        section = data.get(modality)
        if isinstance(section, dict) and section.get("kind") == NO_CODEC:
            extra = sorted(set(section) - {"kind"})
            if extra:
                raise ConfigError(f"{where}: {modality}.kind is 'none' (no {modality} codec) but it also sets "
                                  f"{', '.join(extra)}; remove them or choose a codec kind")
            data[modality] = None
        elif modality in DEFAULT_KINDS and isinstance(section, dict):
            data[modality] = media_settings(modality, section, where=f"{where}.{modality}")
    return from_dict(UTIConfig, data, where=where)
