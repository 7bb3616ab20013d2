"""Read and check the media of one manifest row, ready for a codec: the CPU half of tokenization.

Every problem becomes a MediaError with a stage and a short machine-readable reason (it goes to
errors.jsonl), never a crash: unreadable or truncated files, zero-length audio, NaN/inf samples, too
many channels, absurd sample rates, files over the configured maximum duration (refused from the
header, without reading the file whole), decompression bombs and undecodable images.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uti.config import LimitsConfig
from uti.errors import MediaError
from sharding.manifest import ManifestRow


@dataclass(frozen=True, kw_only=True)
class AudioSpec:
    sample_rate: int
    channels: int


@dataclass(kw_only=True)
class LoadedMedia:
    """Prepared media plus the facts the sample meta records about its source."""

    data: Any  # torch.Tensor (channels, samples) at the codec rate, or uint8 (H, W, 3) at proc_size
    source_sha256: str
    info: dict[str, Any] = field(default_factory=dict)


def _fail(row: ManifestRow, stage: str, reason: str, detail: str) -> MediaError:
    return MediaError(f"{row.id} ({row.path}): {detail}", stage=stage, reason=reason)


def read_source_bytes(row: ManifestRow, *, max_bytes: int | None = None) -> bytes:
    """The raw bytes of a row's media: a file, or a Hugging Face dataset reference in `extra`."""
    extra = row.extra or {}
    if "hf_source" in extra and "column" in extra:
        return _hf_bytes(extra["hf_source"], extra.get("hf_split"), extra.get("hf_file"), int(extra["hf_index"]),
                         extra["column"], row)
    if not row.path:
        raise _fail(row, "read", "no_path", "the row has no media path")
    try:
        size = os.path.getsize(row.path)
        if max_bytes is not None and size > max_bytes:
            raise _fail(row, "read", "too_large", f"{size} bytes exceeds the limit of {max_bytes}")
        with open(row.path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise _fail(row, "read", "missing_file", "file not found") from None
    except IsADirectoryError:
        raise _fail(row, "read", "unreadable", "is a directory") from None
    except OSError as exc:
        raise _fail(row, "read", "unreadable", f"cannot read: {exc.strerror or exc}") from None


@functools.lru_cache(maxsize=8)
def _hf_table(source: str, split: str | None, file: str | None):
    if file is not None:
        import pyarrow.parquet as pq

        return pq.read_table(os.path.join(source, file))
    import datasets

    ds = datasets.load_from_disk(source)
    if split is not None:
        ds = ds[split]
    return ds.with_format("arrow")


def _hf_bytes(source: str, split: str | None, file: str | None, index: int, column: str, row: ManifestRow) -> bytes:
    try:
        table = _hf_table(source, split, file)
        value = (table.slice(index, 1) if file is not None else table[index: index + 1]).column(column).to_pylist()[0]
    except Exception as exc:  # noqa: BLE001 - pyarrow/datasets raise many types
        raise _fail(row, "read", "unreadable", f"cannot read {column}[{index}] from {source}: {exc}") from None
    if isinstance(value, dict):
        value = value.get("bytes") or (open(value["path"], "rb").read() if value.get("path") else None)
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise _fail(row, "read", "unreadable", f"{column}[{index}] holds no media bytes")
    return bytes(value)


def load_audio(row: ManifestRow, *, spec: AudioSpec, limits: LimitsConfig) -> LoadedMedia:
    """Decode, check and resample one audio row to the codec's rate and channel count."""
    import soundfile as sf

    from uti.preprocess import prepare_waveform

    # Header first: a 3-hour file is refused before its samples are read.
    if row.path and not (row.extra or {}).get("hf_source"):
        try:
            info = sf.info(row.path)
        except FileNotFoundError:
            raise _fail(row, "read", "missing_file", "file not found") from None
        except Exception as exc:  # noqa: BLE001 - libsndfile errors are RuntimeError/LibsndfileError
            raise _fail(row, "read", "unreadable", f"not a readable audio file: {exc}") from None
        _check_header(row, info.samplerate, info.channels, info.frames, limits)
    raw = read_source_bytes(row)
    digest = hashlib.sha256(raw).hexdigest()
    truncated = _wav_truncation(raw)
    if truncated:
        raise _fail(row, "read", "unreadable", f"truncated WAV: {truncated}")
    try:
        info = sf.info(io.BytesIO(raw))
        _check_header(row, info.samplerate, info.channels, info.frames, limits)
        data, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _fail(row, "read", "unreadable", f"cannot decode audio: {exc}") from None
    if data.shape[0] == 0:
        raise _fail(row, "validate", "zero_length", "no samples")
    if data.shape[0] < limits.min_audio_samples:
        raise _fail(row, "validate", "too_short", f"{data.shape[0]} samples, fewer than {limits.min_audio_samples}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise _fail(row, "validate", "nan_or_inf", f"{bad} NaN/inf samples")
    wav = prepare_waveform(data.T, rate, target_rate=spec.sample_rate, channels=spec.channels)
    if wav.shape[-1] < 1:
        raise _fail(row, "validate", "too_short", "no samples left after resampling")
    return LoadedMedia(data=wav, source_sha256=digest, info={
        "source_sample_rate": int(rate), "source_channels": int(data.shape[1]), "source_frames": int(data.shape[0]),
        "duration": data.shape[0] / rate,
    })


def _wav_truncation(raw: bytes) -> str | None:
    """Why a RIFF/WAVE file is cut short, or None. libsndfile clamps the length of a truncated WAV to
    the bytes present and decodes it without an error, so a partial clip would be tokenized as whole."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(raw):
        chunk, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if chunk == b"data":
            if size in (0, 0xFFFFFFFF):
                return None  # written by a streaming encoder: the length is unknown by design
            present = len(raw) - pos - 8
            return f"its data chunk declares {size} bytes, {present} are present" if present < size else None
        pos += 8 + size + (size & 1)
    return None  # no data chunk: libsndfile refuses the file itself


def _check_header(row: ManifestRow, rate: int, channels: int, frames: int, limits: LimitsConfig) -> None:
    if channels < 1 or channels > limits.max_channels:
        raise _fail(row, "validate", "channels", f"{channels} channels; at most {limits.max_channels} are accepted "
                    "(limits.max_channels)")
    if not (limits.min_sample_rate <= rate <= limits.max_sample_rate):
        raise _fail(row, "validate", "sample_rate", f"sample rate {rate} Hz outside "
                    f"[{limits.min_sample_rate}, {limits.max_sample_rate}] (limits.*_sample_rate)")
    if frames == 0:
        raise _fail(row, "validate", "zero_length", "no samples")
    seconds = frames / rate
    if seconds > limits.max_audio_seconds:
        raise _fail(row, "validate", "too_long", f"{seconds:.1f} s exceeds limits.max_audio_seconds "
                    f"= {limits.max_audio_seconds:g}; raise it in the config or drop the file")


def load_image(row: ManifestRow, *, proc_size: int, limits: LimitsConfig) -> LoadedMedia:
    """Decode, check and bring one image row to (proc_size, proc_size, 3) uint8."""
    from PIL import Image

    from uti.preprocess import to_rgb_array

    raw = read_source_bytes(row)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
            try:
                with Image.open(io.BytesIO(raw)) as im:
                    size = im.size
                    if size[0] * size[1] > limits.max_image_pixels:
                        raise _fail(row, "validate", "too_large", f"{size[0]}x{size[1]} pixels exceeds "
                                    f"limits.max_image_pixels = {limits.max_image_pixels}")
                    im.load()
                    arr = to_rgb_array(im, proc_size)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _fail(row, "validate", "decompression_bomb", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise _fail(row, "read", "undecodable_image", f"cannot decode image: {exc}") from None
    return LoadedMedia(data=arr, source_sha256=digest, info={"source_size": [int(size[0]), int(size[1])]})


def audio_seconds(n_samples: int, rate: int) -> float:
    return n_samples / rate if rate else math.nan
