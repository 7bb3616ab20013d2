"""Read and check the media of one manifest row, ready for a codec: the CPU half of tokenization.

Every problem becomes a MediaError with a stage and a short machine-readable reason (it goes to
errors.jsonl), never a crash: unreadable or truncated files, zero-length audio, NaN/inf samples, too
many channels, absurd sample rates, files over the configured maximum duration (refused from the
header, without reading the file whole), decompression bombs and undecodable images.

Loading is decode (every check above) then prepare (resample and mix, or resize). `load_media(prepare=False)`
stops after the decode, for preparation on the codec actor's device (`prepare_loaded`, prepare_on "device").
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

from uti.audio_decode import AudioHeader, decode, decode_spans, header_info
from uti.config import LimitsConfig
from uti.errors import MediaError, without_object_reprs
from sharding.manifest import ManifestRow
from sharding.paths import PathEscapeError, resolve_inside
from sharding.storage import StorageError, filesystem, is_url, storage_errors


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
    # False: raw, as load_media(prepare=False) leaves it (audio float32 numpy (channels, samples) at
    # info["source_sample_rate"], images uint8 (H, W, 3) at source size): prepare_loaded makes it codec-ready.
    prepared: bool = True


def _fail(row: ManifestRow, stage: str, reason: str, detail: str) -> MediaError:
    # Details quote library errors, which name in-memory files by their repr: never a memory address here.
    detail = without_object_reprs(detail, name="the file")
    return MediaError(f"{row.id} ({source_label(row)}): {detail}", stage=stage, reason=reason)


def _refuse_empty(row: ManifestRow, size: int | None) -> None:
    """A 0-byte file is its own reason: every decoder would only say it cannot identify the format."""
    if size == 0:
        raise _fail(row, "read", "empty_file", "empty file (0 bytes)")


# ---- where a row's media is ---------------------------------------------------------------------------------
# A row's media is a file (`path`), or bytes inside a Hugging Face dataset: then `path` is the dataset
# folder and `extra` holds the reference below, written by sharding.datasets.hf. The tokenize job copies
# both into the sample meta (`source`, `source_ref`) and verify rebuilds the row from them, so both
# directions live here, next to the one loader they feed.
SOURCE_REF = "source_ref"


@dataclass(frozen=True)
class HFRef:
    """Row `index` of column `column` in a `save_to_disk` folder (`split` of a DatasetDict) or in the
    parquet file `file` under `source`."""

    source: str
    index: int
    column: str
    split: str | None = None
    file: str | None = None


def hf_ref(row: ManifestRow) -> HFRef | None:
    """The row's Hugging Face reference, None for a file row; a malformed one is a MediaError."""
    extra = row.extra or {}
    if "hf_source" not in extra or "column" not in extra:
        return None
    source, index, column = extra.get("hf_source"), extra.get("hf_index"), extra.get("column")
    split, file = extra.get("hf_split"), extra.get("hf_file")
    if (not isinstance(source, str) or not source or isinstance(index, bool) or not isinstance(index, int)
            or index < 0 or not isinstance(column, str) or not column
            or not (split is None or isinstance(split, str)) or not (file is None or isinstance(file, str))):
        raise MediaError(f"{row.id}: malformed Hugging Face reference {extra!r}; expected hf_source (folder), "
                         "hf_index (row >= 0), column, optional hf_split/hf_file", stage="read", reason="bad_reference")
    return HFRef(source=source, index=index, column=column, split=split, file=file)


def source_label(row: ManifestRow) -> str:
    """Where the media is, for messages: the file, or `folder[/file|:split] column[index]`."""
    try:
        ref = hf_ref(row)
    except MediaError:
        ref = None
    if ref is None:
        return str(row.path)
    where = os.path.join(ref.source, ref.file) if ref.file else ref.source + (f":{ref.split}" if ref.split else "")
    return f"{where} {ref.column}[{ref.index}]"


def source_meta(row: ManifestRow) -> dict[str, Any]:
    """The sample-meta fields that say where a row's media came from (`source`, `source_ref` for bytes
    inside a Hugging Face dataset, `window` for a clip of a longer file); `source_row` reads them back."""
    extra = row.extra or {}
    meta: dict[str, Any] = {"source": row.path}
    if extra.get("hf_source"):
        meta[SOURCE_REF] = {k: v for k, v in extra.items() if k != WINDOW}
    window = clip_window(row) if row.modality == "audio" else None  # read (and checked) by decode_audio
    if window is not None:
        meta[WINDOW] = window.to_list()
    return meta


def source_row(meta: dict[str, Any]) -> ManifestRow:
    """The manifest row a stored sample was made from, as far as loading its media needs: the inverse
    of `source_meta`. Without `source_ref` an embedded-bytes row would point at its dataset folder, and
    without `window` a clip would be re-read as its whole video."""
    ref = meta.get(SOURCE_REF)
    dataset = meta.get("dataset") or str(meta["id"]).split(":", 1)[0]
    extra = dict(ref) if isinstance(ref, dict) else {}
    if meta.get(WINDOW) is not None:
        extra[WINDOW] = list(meta[WINDOW])
    return ManifestRow(id=meta["id"], dataset=dataset, modality=meta["modality"], path=meta.get("source"),
                       captions=tuple(meta.get("captions") or ()), split=meta["split"], extra=extra)


# ---- clip windows -------------------------------------------------------------------------------------------
# A row may name the part of its file to tokenize: `extra["window"] = [start_s, end_s]`, seconds in the
# source file (MusicCaps: a 10 s clip of a YouTube video). Downloads come both ways, the whole video or the
# clip already cut, and the file's length tells which:
# * at least `end_s - WINDOW_CUT_SLACK_S` long: the whole video; only samples
#   [round(start_s * rate), min(round(end_s * rate), n)) are kept;
# * else within WINDOW_WHOLE_TOLERANCE_S of `end_s - start_s`: already the clip, taken whole;
# * else neither: a per-sample error (validate, window_outside).
# decode_audio applies the rule after decoding; sharding.datasets.base.window_duration applies it at manifest
# time to the header's duration (no window recorded for a file that is the clip).
WINDOW = "window"
WINDOW_CUT_SLACK_S = 0.5  # a video may end a little before the window's end (its last frame's length)
WINDOW_WHOLE_TOLERANCE_S = 1.0  # a cut clip may differ from its window by a downloader's rounding
WINDOW_CUT, WINDOW_WHOLE, WINDOW_OUTSIDE = "cut", "whole", "outside"


@dataclass(frozen=True)
class ClipWindow:
    """[start, end) seconds of a row's source file."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start

    def to_list(self) -> list[float]:
        return [self.start, self.end]

    def fit(self, file_seconds: float) -> str:
        """WINDOW_CUT, WINDOW_WHOLE or WINDOW_OUTSIDE for a file of this length (the rule above)."""
        if file_seconds >= self.end - WINDOW_CUT_SLACK_S:
            return WINDOW_CUT
        if abs(file_seconds - self.length) <= WINDOW_WHOLE_TOLERANCE_S:
            return WINDOW_WHOLE
        return WINDOW_OUTSIDE


def parse_window(value: Any) -> ClipWindow:
    """[start_s, end_s] as a ClipWindow; ValueError unless two finite numbers with 0 <= start < end."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"a clip window is [start_s, end_s], two numbers; got {value!r}")
    start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise ValueError(f"a clip window needs finite 0 <= start_s < end_s; got {value!r}")
    return ClipWindow(start, end)


def clip_window(row: ManifestRow) -> ClipWindow | None:
    """The row's clip window, None when it has none; a malformed one is a MediaError (read, bad_window)."""
    value = (row.extra or {}).get(WINDOW)
    if value is None:
        return None
    try:
        return parse_window(value)
    except ValueError as exc:
        raise _fail(row, "read", "bad_window", f"{exc}; fix the manifest row's extra.window") from None


def read_source_bytes(row: ManifestRow, *, max_bytes: int | None = None) -> bytes:
    """The raw bytes of a row's media: a file, or a Hugging Face dataset reference in `extra`."""
    ref = hf_ref(row)
    if ref is not None:
        return _hf_bytes(ref, row)
    if not row.path:
        raise _fail(row, "read", "no_path", "the row has no media path")
    try:
        if is_url(row.path):  # an object (s3://, gs://): streamed from the store, never staged on disk
            return _object_bytes(row, max_bytes)
        size = os.path.getsize(row.path)
        _refuse_empty(row, size)
        if max_bytes is not None and size > max_bytes:
            raise _fail(row, "read", "too_large", f"{size} bytes exceeds the limit of {max_bytes}")
        with open(row.path, "rb") as fh:
            raw = fh.read()
        _refuse_empty(row, len(raw))  # emptied since it was measured
        return raw
    except FileNotFoundError:
        raise _fail(row, "read", "missing_file", "file not found") from None
    except IsADirectoryError:
        raise _fail(row, "read", "unreadable", "is a directory") from None
    except StorageError:  # the store, not this sample (credentials, endpoint): not a per-sample error
        raise
    except OSError as exc:
        raise _fail(row, "read", "unreadable", f"cannot read: {exc.strerror or exc}") from None


def _object_bytes(row: ManifestRow, max_bytes: int | None) -> bytes:
    fs, key = filesystem(row.path)
    with storage_errors(row.path, "media"):
        size = fs.size(key)
        _refuse_empty(row, size)
        if max_bytes is not None and size is not None and size > max_bytes:
            raise _fail(row, "read", "too_large", f"{size} bytes exceeds the limit of {max_bytes}")
        return fs.cat_file(key)


def _audio_info(row: ManifestRow) -> AudioHeader:
    """The header of a row's file or object (uti.audio_decode.header_info); for an object only the
    header's byte ranges are fetched."""
    path = row.path
    if not is_url(path):
        _refuse_empty(row, os.path.getsize(path))
        return header_info(path)
    fs, key = filesystem(path)
    with storage_errors(path, "media"), fs.open(key, "rb", block_size=64 * 1024) as fh:
        _refuse_empty(row, getattr(fh, "size", None))
        return header_info(fh)


@functools.lru_cache(maxsize=8)
def _hf_table(source: str, split: str | None, file: str | None):
    if file is not None:
        import pyarrow.parquet as pq

        return pq.read_table(str(resolve_inside(source, file)))  # the reference stays inside its dataset
    import datasets

    ds = datasets.load_from_disk(source)
    if split is not None:
        ds = ds[split]
    return ds.with_format("arrow")


def _hf_bytes(ref: HFRef, row: ManifestRow) -> bytes:
    if not os.path.isdir(ref.source):
        # The dataset stayed behind (another machine, deleted): the same case as a missing file.
        raise _fail(row, "read", "missing_file", f"Hugging Face dataset folder {ref.source} not found")
    try:
        table = _hf_table(ref.source, ref.split, ref.file)
        part = table.slice(ref.index, 1) if ref.file is not None else table[ref.index: ref.index + 1]
        value = part.column(ref.column).to_pylist()[0]
    except Exception as exc:  # noqa: BLE001 - pyarrow/datasets raise many types
        raise _fail(row, "read", "unreadable", f"cannot read {ref.column}[{ref.index}] from {ref.source}: {exc}") from None
    if isinstance(value, dict):
        payload = value.get("bytes")
        if not payload and value.get("path"):
            # A {path} cell: the file must lie inside the dataset folder, as the manifest adapter requires.
            try:
                with open(resolve_inside(ref.source, value["path"], allow_absolute=True), "rb") as fh:
                    payload = fh.read()
            except (OSError, PathEscapeError) as exc:
                raise _fail(row, "read", "unreadable", f"{ref.column}[{ref.index}]: {exc}") from None
        value = payload
    if isinstance(value, (bytes, bytearray)) and not value:
        raise _fail(row, "read", "empty_file", f"{ref.column}[{ref.index}] is empty (0 bytes)")
    if not isinstance(value, (bytes, bytearray)):
        raise _fail(row, "read", "unreadable", f"{ref.column}[{ref.index}] holds no media bytes")
    return bytes(value)


def load_media(row: ManifestRow, *, limits: LimitsConfig, spec: AudioSpec | None = None,
               proc_size: int | None = None, prepare: bool = True) -> LoadedMedia | None:
    """The one entry point from a row to codec-ready media (None for a text row): the tokenize read
    tasks and verify's retokenize check both call it, so they can never load a row differently.
    `spec` is needed for audio rows, `proc_size` for image rows.

    prepare=False: decoded and checked alike (limits, NaN, truncation, empty, too short, source sha256),
    but left raw (LoadedMedia.prepared False): audio float32 (channels, samples) at its source rate,
    images uint8 RGB (H, W, 3) at their source size; `prepare_loaded` prepares them on a device."""
    if row.modality == "audio":
        if prepare and spec is None:
            raise ValueError(f"{row.id}: loading audio needs the codec's AudioSpec")
        return load_audio(row, spec=spec, limits=limits) if prepare else decode_audio(row, limits=limits)
    if row.modality == "image":
        if prepare and proc_size is None:
            raise ValueError(f"{row.id}: loading an image needs the codec's proc_size")
        return load_image(row, proc_size=proc_size, limits=limits, prepare=prepare)
    return None


def prepare_loaded(row: ManifestRow, media: LoadedMedia, *, device: Any, spec: AudioSpec | None = None,
                   proc_size: int | None = None) -> LoadedMedia:
    """Raw media (load_media(prepare=False)) prepared on `device`, as prepare_on "device" does: by
    uti.preprocess.prepare_media, the function the codec actor runs (verify re-prepares a device-prepared
    sample with it too). `spec` for audio, `proc_size` for images; prepared media is returned as it is."""
    if media.prepared:
        return media
    from uti.preprocess import prepare_media

    audio = row.modality == "audio"
    return _prepared(row, media, lambda: prepare_media(
        row.modality, media.data, media.info.get("source_sample_rate"), target_rate=spec.sample_rate if audio else None,
        channels=spec.channels if audio else None, proc_size=proc_size, device=device))


def _prepared(row: ManifestRow, media: LoadedMedia, prepare) -> LoadedMedia:
    """`prepare()` as media of this row: a failure is a MediaError of stage "prepare" (a per-sample error,
    not a crashed chunk), a clip resampled to nothing one of stage "validate"."""
    try:
        data = prepare()
    except Exception as exc:  # noqa: BLE001 - a bad array, a device error: this sample's, the rest go on
        raise _fail(row, "prepare", "prepare_error", f"cannot prepare the {row.modality}: {type(exc).__name__}: {exc}") from None
    if row.modality == "audio" and data.shape[-1] < 1:
        raise _fail(row, "validate", "too_short", "no samples left after resampling")
    return LoadedMedia(data=data, source_sha256=media.source_sha256, info=media.info)


def load_audio(row: ManifestRow, *, spec: AudioSpec, limits: LimitsConfig) -> LoadedMedia:
    """Decode, check and resample one audio row to the codec's rate and channel count (in the reader:
    uti.preprocess.prepare_waveform on the CPU)."""
    from uti.preprocess import prepare_waveform

    media = decode_audio(row, limits=limits)
    return _prepared(row, media, lambda: prepare_waveform(media.data, media.info["source_sample_rate"],
                                                          target_rate=spec.sample_rate, channels=spec.channels))


def decode_audio(row: ManifestRow, *, limits: LimitsConfig) -> LoadedMedia:
    """Decode and check one audio row: raw float32 (channels, samples) at its source rate (not prepared),
    only its clip window when it has one (see WINDOW)."""
    window = clip_window(row)
    # Header first: a 3-hour file is refused before its samples are read.
    if row.path and hf_ref(row) is None:
        try:
            header = _audio_info(row)
        except FileNotFoundError:
            raise _fail(row, "read", "missing_file", "file not found") from None
        except MediaError:  # an empty file
            raise
        except StorageError:  # the store, not this sample: the job stops with the one-line reason
            raise
        except Exception as exc:  # noqa: BLE001 - AudioDecodeError names container and codec
            raise _fail(row, "read", "unreadable", f"not a readable audio file: {exc}") from None
        _check_header(row, header, limits, window)
    raw = read_source_bytes(row)
    digest = hashlib.sha256(raw).hexdigest()
    truncated = _wav_truncation(raw)
    if truncated:
        raise _fail(row, "read", "unreadable", f"truncated WAV: {truncated}")
    try:
        header = header_info(io.BytesIO(raw))
        _check_header(row, header, limits, window)
        data, rate, applied = _decoded_samples(row, raw, header, window, limits)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - AudioDecodeError, LibsndfileError...
        raise _fail(row, "read", "unreadable", f"cannot decode audio: {exc}") from None
    if data.shape[0] == 0:
        raise _fail(row, "validate", "zero_length", "no samples")
    if data.shape[0] < limits.min_audio_samples:
        raise _fail(row, "validate", "too_short", f"{data.shape[0]} samples, fewer than {limits.min_audio_samples}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise _fail(row, "validate", "nan_or_inf", f"{bad} NaN/inf samples")
    info = {"source_sample_rate": int(rate), "source_channels": int(data.shape[1]), "source_frames": int(data.shape[0]),
            "duration": data.shape[0] / rate}
    if applied is not None:
        info["window_applied"] = applied.to_list()
    # data.T: a (channels, samples) view of the decoder's (samples, channels) buffer, as the reader mixes it.
    return LoadedMedia(data=data.T, source_sha256=digest, prepared=False, info=info)


def _decoded_samples(row: ManifestRow, raw: bytes, header: AudioHeader, window: ClipWindow | None,
                     limits: LimitsConfig) -> tuple[np.ndarray, int, ClipWindow | None]:
    """(samples, channels) float32, the rate, and the window applied (None: the file whole)."""
    if window is not None:
        return _windowed(row, raw, header, window)
    if header.frames is not None or header.duration is not None:
        decoded = decode(raw, header=header)
        return decoded.data, decoded.sample_rate, None
    # No length in the header (a live-streamed webm): decode no further than the limit allows.
    spans = decode_spans(raw, [(0.0, limits.max_audio_seconds + 1.0)], header=header)
    if spans.frames_read / spans.sample_rate > limits.max_audio_seconds:
        raise _fail(row, "validate", "too_long", f"more than {limits.max_audio_seconds:g} s decoded (its header "
                    "gives no length) exceeds limits.max_audio_seconds; raise it in the config or drop the file")
    return spans.parts[0], spans.sample_rate, None


def _windowed(row: ManifestRow, raw: bytes, header: AudioHeader,
              window: ClipWindow) -> tuple[np.ndarray, int, ClipWindow | None]:
    """The rule of WINDOW: the head of the file (the clip, if the file is one) and the window (if it is the
    whole video) are kept while decoding, which stops at the window's end."""
    head = (0.0, window.length + WINDOW_WHOLE_TOLERANCE_S)
    spans = decode_spans(raw, [head, (window.start, window.end)], header=header)
    file_seconds = spans.frames_read / spans.sample_rate  # the file's length unless it reaches the window's end
    fit = window.fit(file_seconds)
    if fit == WINDOW_CUT and spans.parts[1].shape[0]:
        return spans.parts[1], spans.sample_rate, window
    if fit == WINDOW_WHOLE:
        return spans.parts[0], spans.sample_rate, None
    raise _fail(row, "validate", "window_outside", f"the file is {file_seconds:.2f} s long and the clip window is "
                f"{window.start:g}..{window.end:g} s: it is neither the whole video (at least "
                f"{window.end - WINDOW_CUT_SLACK_S:g} s) nor the clip ({window.length:g} s, within "
                f"{WINDOW_WHOLE_TOLERANCE_S:g} s); check the file, or drop the row")


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


def _check_header(row: ManifestRow, header: AudioHeader, limits: LimitsConfig, window: ClipWindow | None) -> None:
    """The limits a header can be held to before any sample is decoded. The duration limit applies to what
    is tokenized: a windowed row's window."""
    rate, channels, frames = header.sample_rate, header.channels, header.frames
    if channels < 1 or channels > limits.max_channels:
        raise _fail(row, "validate", "channels", f"{channels} channels; at most {limits.max_channels} are accepted "
                    "(limits.max_channels)")
    if not (limits.min_sample_rate <= rate <= limits.max_sample_rate):
        raise _fail(row, "validate", "sample_rate", f"sample rate {rate} Hz outside "
                    f"[{limits.min_sample_rate}, {limits.max_sample_rate}] (limits.*_sample_rate)")
    if frames == 0:
        raise _fail(row, "validate", "zero_length", "no samples")
    if window is not None:
        seconds, what = window.length, f"the clip window {window.start:g}..{window.end:g}: "
    else:
        seconds, what = (frames / rate if frames is not None else header.duration), ""
    if seconds is not None and seconds > limits.max_audio_seconds:
        raise _fail(row, "validate", "too_long", f"{what}{seconds:.1f} s exceeds limits.max_audio_seconds "
                    f"= {limits.max_audio_seconds:g}; raise it in the config or drop the file")


def load_image(row: ManifestRow, *, proc_size: int | None, limits: LimitsConfig, prepare: bool = True) -> LoadedMedia:
    """Decode, check and bring one image row to (proc_size, proc_size, 3) uint8; prepare=False: uint8 RGB
    (H, W, 3) at its source size, after the same mode conversion (uti.preprocess.to_rgb)."""
    from PIL import Image

    from uti.preprocess import to_rgb, to_rgb_array

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
                    arr = to_rgb_array(im, proc_size) if prepare else np.asarray(to_rgb(im), dtype=np.uint8).copy()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _fail(row, "validate", "decompression_bomb", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise _fail(row, "read", "undecodable_image", f"cannot decode image: {exc}") from None
    return LoadedMedia(data=arr, source_sha256=digest, prepared=prepare,
                       info={"source_size": [int(size[0]), int(size[1])]})


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".aif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def media_kind(name: str | None, data: bytes | None) -> str | None:
    """`audio`, `image` or None: what a file is, from its name's extension, else from its first bytes (the
    formats the readers here decode). For media stored without a type, e.g. a plain {bytes, path} column."""
    suffix = os.path.splitext(name or "")[1].lower()
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    head = bytes(data[:16]) if data else b""
    if head[:4] == b"RIFF":
        return {b"WAVE": "audio", b"WEBP": "image"}.get(head[8:12])
    if head[4:8] == b"ftyp":  # ISO media: HEIF/AVIF stills, else (m4a, mp4) the audio track is read
        return "image" if head[8:12] in (b"heic", b"heix", b"mif1", b"avif") else "audio"
    if head.startswith((b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"FORM", b"\x1aE\xdf\xa3")):
        return "audio"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    return None


def audio_seconds(n_samples: int, rate: int) -> float:
    return n_samples / rate if rate else math.nan
