"""What a token space records about a codec, without loading the codec when it was loaded before.

A job's token space names every configured codec, but an audio-only job never runs the image codec, and
loading one costs seconds on every actor (a VQGAN is diffusers' import plus a model build: ~3 s of a
~10 s start-up). So each loaded codec's descriptor is remembered in a small JSON file, keyed by
everything that decides the codec's output:

- the modality, the token-space version and the codec's settings (canonical JSON: kind, arch, seed ...);
- the adapter's source (its module file and those of the classes it is built on, the shared base and
  weights modules) and the versions of the libraries the adapters run on (torch, numpy, encodec,
  diffusers, transformers, the plugin's package);
- for weights in a local file or folder: every file's relative path, size and modification time.

Weights named `pretrained` resolve through a hub cache the key cannot see, so they are never looked up
here: such a codec is always loaded. Every real load writes its entry again, and an entry a real load
contradicts is replaced with a warning (the key missed something: say so rather than trust it). A wrong
entry can never pass silently later either: the codec, when a job, verify or train does load it, is
checked against the dataset's token space and refused on any difference. JSON only, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from uti.config import CodecSettings
from uti.token_space import CodecDescriptor

log = logging.getLogger(__name__)

# Libraries whose versions can change a built-in adapter's output (absent ones count as absent).
LIBRARIES = ("torch", "numpy", "encodec", "diffusers", "transformers", "snac", "descript-audio-codec", "safetensors")


def cache_dir() -> Path:
    from uti.codecs.weights import uti_cache_dir

    return uti_cache_dir() / "descriptors"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _file_sha(path: str | None) -> str:
    if not path:
        return "-"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "-"


def _weights_signature(value: str) -> list | None:
    """Size and mtime of every file of a local weights file or folder; None when the key cannot see them."""
    if value == "pretrained" or "://" in value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    if path.is_dir():
        out = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                st = p.stat()
                out.append([p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
        return out
    return None  # missing: the load will say so


def descriptor_key(modality: str, settings: CodecSettings, version: int) -> str | None:
    """The cache key of this codec's descriptor, or None when it must be loaded to be known."""
    import inspect

    from uti.codecs import base, weights
    from uti.codecs.registry import codec_class, codec_entries
    from uti.strict import to_dict

    data = to_dict(settings)
    signatures = {}
    if isinstance(data.get("weights"), str) and not data["weights"].startswith("random:"):
        signatures["weights"] = _weights_signature(data["weights"])
        if signatures["weights"] is None:
            return None
    cls = codec_class(settings.kind)
    entry = codec_entries().get(settings.kind)
    plugin = entry.source if entry is not None and entry.source not in ("uti", "uti (built-in)") else None
    parts = {
        "modality": modality, "version": version, "settings": data, "weights_files": signatures,
        "code": [_file_sha(path) for path in _source_files(cls, base, weights)],
        "libraries": {d: _version(d) for d in LIBRARIES + ((plugin,) if plugin else ())},
        # the build as well as the release (2.11.0+cpu and +cu130 share a distribution version)
        "torch": getattr(sys.modules.get("torch"), "__version__", "-"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _source_files(cls: type, *modules: Any) -> list[str | None]:
    """The adapter's module and the module of every class it inherits from (an adapter built on another
    one, or on hf_common's skeletons, runs their code too), then the shared modules; builtins aside."""
    import inspect

    files: list[str | None] = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or klass.__module__ in ("builtins", "abc"):
            continue
        path = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
        if path not in files:
            files.append(path)
    for m in modules:
        path = inspect.getsourcefile(m)
        if path not in files:
            files.append(path)
    return files


def _entry(modality: str, settings: CodecSettings, version: int) -> Path | None:
    """The cache file of this codec's descriptor, or None when it cannot be cached."""
    key = descriptor_key(modality, settings, version)
    return cache_dir() / f"{key}.json" if key is not None else None


def cached(modality: str, settings: CodecSettings, version: int) -> CodecDescriptor | None:
    """The remembered descriptor, or None (never loaded with this key, or not cacheable)."""
    path = _entry(modality, settings, version)
    if path is None:
        return None
    try:
        return CodecDescriptor.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt by the load that follows
        log.warning("ignoring the damaged codec descriptor cache entry %s (%s)", path, exc)
        return None


def remember(modality: str, settings: CodecSettings, version: int, descriptor: CodecDescriptor) -> None:
    """Write what a real load gave. An unwritable cache is skipped, never an error."""
    path = _entry(modality, settings, version)
    if path is None:
        return
    fresh = descriptor.to_dict()
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == fresh:
        return
    if old is not None:
        log.warning("the cached descriptor of the %s codec (%s) differs from the loaded codec: replaced. Its key "
                    "missed a change; delete %s if this repeats", modality, settings.kind, cache_dir())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(fresh, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def describe_without_loading(modality: str, settings: CodecSettings, version: int, *, device: str) -> CodecDescriptor:
    """The codec's descriptor: remembered, or from a load that is dropped at once (and remembered)."""
    found = cached(modality, settings, version)
    if found is not None:
        return found
    from uti.codecs.registry import build_audio_codec, build_image_codec

    build = build_audio_codec if modality == "audio" else build_image_codec
    codec = build(settings, device=device)
    descriptor = codec.descriptor(version)
    remember(modality, settings, version, descriptor)
    return descriptor
