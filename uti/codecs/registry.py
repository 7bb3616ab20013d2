"""The codec registry: adapters found through the `uti.codecs` entry-point group.

An entry point's name is the adapter's `kind` (what uti.yaml's `kind:` says) and its value the adapter
class, e.g. in a plugin's pyproject.toml:

    [project.entry-points."uti.codecs"]
    mycodec = "my_package.codec:MyAudioCodec"

The class subclasses AudioCodec or ImageCodec (uti.codecs.base) and names its `kind`, its `settings`
dataclass and `from_settings`. Our own adapters register the same way (pyproject.toml); BUILTIN keeps
them usable from a source tree whose installed metadata predates them. Modules are imported only when
their kind is used or listed. Text codecs are the two built-in kinds of TextConfig.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from uti.codecs.base import AudioCodec, ImageCodec, TextCodec
from uti.codecs.batching import check_encode_batch, default_encode_batch, device_type, exact_numerics
from uti.config import AudioSettings, CodecSettings, ImageSettings, TextConfig
from uti.errors import ConfigError
from uti.quiet import no_loading_bars

log = logging.getLogger(__name__)

GROUP = "uti.codecs"
BUILTIN: dict[str, str] = {
    "encodec": "uti.codecs.encodec_audio:EncodecAudioCodec",
    "mimi": "uti.codecs.mimi:MimiAudioCodec",
    "dac": "uti.codecs.dac:DacAudioCodec",
    "xcodec2": "uti.codecs.xcodec2:Xcodec2AudioCodec",
    "wavtokenizer": "uti.codecs.wavtokenizer:WavTokenizerAudioCodec",
    "neucodec": "uti.codecs.neucodec:NeuCodecAudioCodec",
    "xcodec": "uti.codecs.xcodec:XcodecAudioCodec",
    "higgs_audio_v2": "uti.codecs.higgs_audio_v2:HiggsAudioV2AudioCodec",
    "snac": "uti.codecs.snac_audio:SnacAudioCodec",
    "vqgan": "uti.codecs.vq_image:VQImageCodec",
    "emu3": "uti.codecs.emu3:Emu3ImageCodec",
    "janus": "uti.codecs.janus:JanusImageCodec",
    "seed": "uti.codecs.seed:SeedImageCodec",
    "chameleon": "uti.codecs.chameleon:ChameleonImageCodec",
}
_BASES = {"audio": (AudioCodec, AudioSettings), "image": (ImageCodec, ImageSettings)}


@dataclass(frozen=True, kw_only=True)
class CodecEntry:
    kind: str
    target: str  # "module:Class"
    source: str  # the distribution that registers it ("uti (built-in)" when only BUILTIN names it)


@lru_cache(maxsize=1)
def codec_entries() -> dict[str, CodecEntry]:
    """Every registered kind. Two distributions claiming one kind with different classes is an error
    (which one wins would depend on install order)."""
    found: dict[str, CodecEntry] = {}
    for ep in entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        entry = CodecEntry(kind=ep.name, target=ep.value, source=dist)
        if ep.name in found and found[ep.name].target != ep.value:
            raise ConfigError(f"codec kind {ep.name!r} is registered twice in the {GROUP!r} entry points: "
                              f"{found[ep.name].target} ({found[ep.name].source}) and {ep.value} ({dist}); "
                              "uninstall one of the two packages")
        found[ep.name] = entry
    for kind, target in BUILTIN.items():
        if kind in found and found[kind].target != target:
            raise ConfigError(f"codec kind {kind!r} is built into uti ({target}) but the package "
                              f"{found[kind].source} registers {found[kind].target} under the same name; "
                              "a plugin must use a kind of its own")
        found.setdefault(kind, CodecEntry(kind=kind, target=target, source="uti (built-in)"))
    return found


def reload_entries() -> None:
    """Forget what was discovered (after a plugin is installed or removed in this process)."""
    codec_entries.cache_clear()
    codec_class.cache_clear()


@lru_cache(maxsize=None)
def codec_class(kind: str) -> type:
    """The adapter class registered as `kind`, checked against the contract."""
    entries = codec_entries()
    if kind not in entries:
        raise ConfigError(f"no codec of kind {kind!r} is installed; installed: {', '.join(sorted(entries))} "
                          f"(`uti tokenspace codecs` lists them; a plugin registers under the {GROUP!r} entry points)")
    entry = entries[kind]
    module_name, _, attr = entry.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"codec kind {kind!r}: cannot load {entry.target} (from {entry.source}): "
                          f"{type(exc).__name__}: {exc}") from None
    _check_contract(kind, cls, entry)
    return cls


def _check_contract(kind: str, cls: Any, entry: CodecEntry) -> None:
    where = f"codec kind {kind!r} ({entry.target}, from {entry.source})"
    modality = getattr(cls, "modality", None)
    if not isinstance(cls, type) or modality not in _BASES or not issubclass(cls, _BASES[modality][0]):
        raise ConfigError(f"{where}: not a subclass of uti.codecs.base.AudioCodec or ImageCodec")
    if getattr(cls, "kind", None) != kind:
        raise ConfigError(f"{where}: its class says kind {getattr(cls, 'kind', None)!r}; the entry-point name "
                          "and the class's `kind` must agree")
    settings = getattr(cls, "settings", None)
    if not (isinstance(settings, type) and issubclass(settings, _BASES[modality][1])):
        raise ConfigError(f"{where}: `settings` must be a subclass of uti.config.{_BASES[modality][1].__name__}")


def settings_class(modality: str, kind: str, *, where: str) -> type[CodecSettings]:
    """The typed uti.yaml section of `kind`, which must be a `modality` codec."""
    if kind not in codec_entries():
        raise ConfigError(f"{where}: {kind!r} is not an installed {modality} codec; choose one of "
                          f"{', '.join(repr(k) for k in kinds(modality))} (or 'none': no {modality} codec). "
                          f"`uti tokenspace codecs` lists them; a plugin adds one under the {GROUP!r} entry points")
    try:
        cls = codec_class(kind)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if cls.modality != modality:
        raise ConfigError(f"{where}: {kind!r} is an {cls.modality} codec, not an {modality} one; "
                          f"{modality} codecs: {', '.join(kinds(modality))}")
    return cls.settings


def kinds(modality: str) -> list[str]:
    """Installed kinds of `modality` (imports each adapter module to read its modality)."""
    out = []
    for kind in sorted(codec_entries()):
        try:
            if codec_class(kind).modality == modality:
                out.append(kind)
        except ConfigError:
            continue
    return out


def _build(modality: str, cfg: CodecSettings, device: str):
    cls = codec_class(cfg.kind)
    if cls.modality != modality or not isinstance(cfg, cls.settings):
        raise ConfigError(f"{modality}.kind {cfg.kind!r}: settings {type(cfg).__name__} do not belong to "
                          f"{cls.__name__} ({cls.modality})")
    batch = check_encode_batch(getattr(cfg, "encode_batch", None), where=f"{modality}.encode_batch")
    exact_numerics()  # float32, TF32 off: before any weights reach a GPU
    with no_loading_bars():  # a plugin's own from_pretrained too (its library is imported with its module)
        codec = cls.from_settings(cfg, device=device)
    codec.set_encode_batch(batch if batch is not None else default_encode_batch(device_type(getattr(codec, "device", device))))
    return codec


def build_audio_codec(cfg: AudioSettings, *, device: str = "cpu") -> AudioCodec:
    return _build("audio", cfg, device)


def build_image_codec(cfg: ImageSettings, *, device: str = "cpu") -> ImageCodec:
    return _build("image", cfg, device)


def build_text_codec(cfg: TextConfig) -> TextCodec:
    from uti.codecs.text import ByteTextCodec, HFTextCodec

    return ByteTextCodec() if cfg.kind == "byte" else HFTextCodec(cfg.path)


@dataclass(frozen=True, kw_only=True)
class InstalledCodec:
    kind: str
    modality: str
    source: str
    target: str
    variants: list  # list[CodecVariant]
    error: str = ""  # why it could not be loaded (listed, not raised: one broken plugin hides nothing else)


def installed_codecs() -> list[InstalledCodec]:
    """Every registered codec with its variants' sizes, for `uti tokenspace codecs`."""
    out = []
    for kind, entry in sorted(codec_entries().items()):
        try:
            cls = codec_class(kind)
            out.append(InstalledCodec(kind=kind, modality=cls.modality, source=entry.source, target=entry.target,
                                      variants=list(cls.variants())))
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported in the listing
            out.append(InstalledCodec(kind=kind, modality="?", source=entry.source, target=entry.target,
                                      variants=[], error=f"{type(exc).__name__}: {exc}"))
    return out
