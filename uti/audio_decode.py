"""How audio bytes and files become samples, and what decodes them: the one owner of both.

Two decoders, tried in this order:

* libsndfile (soundfile) for what it opens: wav, flac, ogg (vorbis, opus), mp3, aiff. Its results are the
  ones every stored shard of those formats was made from, so they stay exactly as `soundfile.read` gives.
* FFmpeg through PyAV (its wheels bundle FFmpeg, so nothing is needed on the machine) for the containers
  real downloads come in that libsndfile does not open: m4a/mp4 (AAC, ALAC), webm/mkv (opus, vorbis),
  raw AAC (ADTS), and whatever else FFmpeg reads.

Samples come out float32 (samples, channels) at the decoder's native rate and channel layout: resampling and
mixing are uti.preprocess's job. FFmpeg decodes on one thread per file: the readers run many decodes at
once, one per core. This module sits in `uti` (which imports nothing of ours) so that `uti doctor` can list
what decodes; sharding.media and the dataset adapters call it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from uti.errors import UTIError, without_object_reprs

LIBSNDFILE, FFMPEG = "libsndfile", "ffmpeg"
# libsndfile reports a frame count it cannot know (a streamed WAV) as a sentinel: that is "unknown".
_UNKNOWN_FRAMES = 2 ** 62
# What `decoders()` asks the FFmpeg build about: the formats downloads come in, each as the demuxer it
# needs and the decoders of which any one will do.
FFMPEG_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "m4a": ("mov", ("aac",)),
    "aac": ("aac", ("aac",)),
    "opus": ("ogg", ("opus", "libopus")),
    "webm": ("matroska", ("opus", "libopus", "vorbis")),
    "mp3": ("mp3", ("mp3float", "mp3")),
    "flac": ("flac", ("flac",)),
}
INSTALL_FFMPEG = "python3 -m pip install -c constraints.txt av  (its wheel bundles FFmpeg)"


class AudioDecodeError(UTIError):
    """Neither decoder can read the audio. The message names the container and codec found, or says that
    no container was recognised."""

    def __init__(self, message: str, *, container: str | None = None, codec: str | None = None):
        super().__init__(message)
        self.container = container
        self.codec = codec


@dataclass(frozen=True, kw_only=True)
class AudioHeader:
    """What a file's header says, read without decoding its samples. `frames` is libsndfile's exact count
    (None where the header has none, and for FFmpeg, whose containers give a duration); `duration` is in
    seconds, None when unknown."""

    sample_rate: int
    channels: int
    frames: int | None
    duration: float | None
    container: str
    codec: str
    decoder: str  # LIBSNDFILE or FFMPEG

    @property
    def label(self) -> str:
        return f"container {self.container} (codec {self.codec})"


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodedAudio:
    """float32 (samples, channels) at `sample_rate` (the decoder's; an FFmpeg header can name the core rate
    of a stream that decodes at twice it, as HE-AAC does)."""

    data: np.ndarray
    sample_rate: int
    header: AudioHeader


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodedSpans:
    """The samples of each requested span of seconds, decoding no further than the last span's end.
    `frames_read` is how far decoding got: less than the furthest span's end means the file ended there
    (its length is then `frames_read`)."""

    parts: tuple[np.ndarray, ...]
    frames_read: int
    sample_rate: int
    header: AudioHeader


@dataclass(frozen=True, kw_only=True)
class DecoderInfo:
    """One decoder as `uti doctor` lists it: its version and the formats it decodes, or why it does not load."""

    name: str
    version: str | None
    formats: tuple[str, ...]
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


# ---- headers ------------------------------------------------------------------------------------------------

def header_info(source: str | os.PathLike | BinaryIO) -> AudioHeader:
    """The header of a path or a seekable file-like object (an object-store file is one), from the container
    alone: libsndfile's when it opens the file, else FFmpeg's container and stream metadata."""
    start = _tell(source)
    try:
        return _sndfile_header(source)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises LibsndfileError/RuntimeError/TypeError
        if not _not_sndfiles(exc):
            # A file of libsndfile's own formats that it finds malformed (a WAV without its data chunk, a cut
            # Ogg page) is broken, not FFmpeg's to guess at: libsndfile's words, exactly as they were.
            raise AudioDecodeError(str(exc), container=sniff_container(_peek(source))) from None
        sndfile_error = _short(exc)
    _rewind(source, start)
    return _ffmpeg_header(source, sndfile_error)


# libsndfile's public error codes that mean "not a file I read" (sf_error: SF_ERR_UNRECOGNISED_FORMAT,
# SF_ERR_UNSUPPORTED_ENCODING); any other is a malformed file of a format it does read.
_NOT_MINE_CODES = (1, 4)


def _not_sndfiles(exc: BaseException) -> bool:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code in _NOT_MINE_CODES
    return "Format not recognised" in str(exc)  # soundfile < 0.12 raised RuntimeError without a code


def _sndfile_header(source: Any) -> AudioHeader:
    import soundfile as sf

    info = sf.info(source)
    frames = int(info.frames)
    known = 0 < frames < _UNKNOWN_FRAMES and info.samplerate > 0
    return AudioHeader(sample_rate=int(info.samplerate), channels=int(info.channels), frames=frames,
                       duration=frames / info.samplerate if known else None, container=str(info.format).lower(),
                       codec=str(info.subtype).lower(), decoder=LIBSNDFILE)


def _ffmpeg_header(source: Any, sndfile_error: str) -> AudioHeader:
    av = _import_av(source, sndfile_error)
    head = _peek(source)
    try:
        with av.open(_av_source(source), mode="r", metadata_errors="ignore") as container:
            stream = _audio_stream(container)
            return _stream_header(container, stream)
    except AudioDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - av.FFmpegError and its OSError/ValueError kin
        raise _unopened(exc, head, sndfile_error) from None


def _stream_header(container: Any, stream: Any) -> AudioHeader:
    ctx = stream.codec_context
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    return AudioHeader(sample_rate=int(ctx.sample_rate or 0), channels=int(ctx.channels or 0), frames=None,
                       duration=duration if duration and duration > 0 else None, container=container.format.name,
                       codec=ctx.name or "unknown", decoder=FFMPEG)


def _audio_stream(container: Any) -> Any:
    if not container.streams.audio:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise AudioDecodeError(f"container {container.format.name} has no audio stream (streams: {kinds})",
                               container=container.format.name)
    return container.streams.audio[0]


# ---- decoding -----------------------------------------------------------------------------------------------

def decode(raw: bytes, *, name: str | None = None, header: AudioHeader | None = None) -> DecodedAudio:
    """All of `raw` as float32 (samples, channels). `header` (from `header_info` on the same bytes) saves
    probing them again; `name` only labels errors of a decode called on its own."""
    header = header or _header_of(raw, name)
    if header.decoder == LIBSNDFILE:
        import soundfile as sf

        data, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        return DecodedAudio(data=data, sample_rate=int(rate), header=header)
    stream = _ffmpeg_blocks(raw, header)
    rate, blocks = next(stream), list(stream)
    data = np.concatenate(blocks) if blocks else np.zeros((0, max(header.channels, 1)), np.float32)
    return DecodedAudio(data=data, sample_rate=rate, header=header)


def decode_spans(raw: bytes, spans: Sequence[tuple[float, float]], *, name: str | None = None,
                 header: AudioHeader | None = None) -> DecodedSpans:
    """The samples [round(start * rate), round(end * rate)) of each (start, end) span in seconds, decoding
    block by block and stopping at the furthest end: a clip window of a long video costs the samples up to
    its end, and keeps only the window in memory."""
    header = header or _header_of(raw, name)
    blocks = _sndfile_blocks(raw) if header.decoder == LIBSNDFILE else _ffmpeg_blocks(raw, header)
    rate = next(blocks)
    bounds = [(round(a * rate), round(b * rate)) for a, b in spans]
    stop = max((b for _, b in bounds), default=0)
    kept: list[list[np.ndarray]] = [[] for _ in bounds]
    pos, channels = 0, header.channels
    for block in blocks:
        channels = block.shape[1]
        end = pos + block.shape[0]
        for (a, b), out in zip(bounds, kept):
            lo, hi = max(a, pos), min(b, end)
            if lo < hi:
                out.append(block[lo - pos:hi - pos])
        pos = end
        if pos >= stop:
            break
    blocks.close()  # the FFmpeg container closes here, not when the generator is collected
    parts = tuple(np.concatenate(p) if p else np.zeros((0, max(channels, 1)), np.float32) for p in kept)
    return DecodedSpans(parts=parts, frames_read=min(pos, stop), sample_rate=rate, header=header)


def _header_of(raw: bytes, name: str | None) -> AudioHeader:
    try:
        return header_info(io.BytesIO(raw))
    except AudioDecodeError as exc:
        if name:
            raise AudioDecodeError(f"{name}: {exc}", container=exc.container, codec=exc.codec) from None
        raise


def _sndfile_blocks(raw: bytes) -> Iterator[Any]:
    """The sample rate, then float32 (samples, channels) blocks of libsndfile's decode."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(raw)) as fh:
        yield int(fh.samplerate)
        while True:
            block = fh.read(64 * 1024, dtype="float32", always_2d=True)
            if not block.shape[0]:
                return
            yield block


def _ffmpeg_blocks(raw: bytes, header: AudioHeader) -> Iterator[Any]:
    """The decoded sample rate (from the first frame), then one float32 (samples, channels) block per frame.
    Errors name the container and codec; a stream whose rate or layout changes midway is refused (its
    halves cannot be joined without resampling)."""
    import av

    label = header.label
    try:
        with av.open(io.BytesIO(raw), mode="r", metadata_errors="ignore") as container:
            stream = _audio_stream(container)
            stream.codec_context.thread_count = 1  # many decodes run at once, one per core
            frames = container.decode(stream)
            first = next(frames, None)
            if first is None:
                raise AudioDecodeError(f"{label}: no audio frames", container=header.container, codec=header.codec)
            rate, layout = int(first.sample_rate), first.layout.nb_channels
            yield rate
            decoded = 0
            for frame in _chain(first, frames):
                if int(frame.sample_rate) != rate or frame.layout.nb_channels != layout:
                    raise AudioDecodeError(
                        f"{label}: the stream changes from {rate} Hz x{layout} to {frame.sample_rate} Hz "
                        f"x{frame.layout.nb_channels} after {decoded / rate:.2f} s; convert the file to one "
                        "format first", container=header.container, codec=header.codec)
                block = frame_samples(frame)
                decoded += block.shape[0]
                yield block
            _check_complete(header, decoded, rate)
    except AudioDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - av.FFmpegError subclasses OSError/ValueError/PermissionError
        raise AudioDecodeError(f"{label}: {_ffmpeg_reason(exc)}", container=header.container,
                               codec=header.codec) from None


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# A decode that ends more than this short of the container's stated duration lost its end: FFmpeg stops at
# the last whole packet of a file cut at a packet boundary without an error. Encoder padding and Ogg's
# pre-skip stay well inside it (one codec frame: 1024 samples of AAC, 20 ms of opus).
TRUNCATION_TOLERANCE_S = 0.5


def _check_complete(header: AudioHeader, decoded: int, rate: int) -> None:
    if header.duration is None:
        return
    seconds = decoded / rate
    if seconds < header.duration - TRUNCATION_TOLERANCE_S:
        raise AudioDecodeError(f"{header.label}: truncated: its header says {header.duration:.2f} s, the data "
                               f"ends after {seconds:.2f} s; download the file again",
                               container=header.container, codec=header.codec)


_SCALE = {np.dtype(np.int16): 1 / 32768, np.dtype(np.int32): 1 / 2 ** 31, np.dtype(np.int64): 1 / 2 ** 63}


def frame_samples(frame: Any) -> np.ndarray:
    """One FFmpeg audio frame as float32 (samples, channels): planar formats transposed, packed ones
    reshaped, integer samples scaled to [-1, 1) as libsndfile scales them (u8 is offset by 128)."""
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    arr = arr.T if frame.format.is_planar else arr.reshape(-1, channels)
    if arr.dtype == np.uint8:
        out = (arr.astype(np.float32) - 128.0) / 128.0
    elif arr.dtype in _SCALE:
        out = (arr.astype(np.float64) * _SCALE[arr.dtype]).astype(np.float32)
    else:
        out = arr.astype(np.float32, copy=False)
    return np.ascontiguousarray(out)


# ---- errors -------------------------------------------------------------------------------------------------

# Leading bytes -> the container they announce, to name a file whose header FFmpeg cannot open either.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "mov,mp4,m4a"),
    (0, b"\x1aE\xdf\xa3", "matroska,webm"),
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"RIFF", "wav (RIFF)"),
    (0, b"FORM", "aiff"),
    (0, b"ID3", "mp3 (ID3 tag)"),
)


def sniff_container(head: bytes) -> str | None:
    """The container the first bytes announce, or None: for messages about files no decoder opens."""
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            if magic == b"ftyp":
                brand = head[8:12].decode("latin-1").strip()
                return f"{name} (brand {brand})" if brand.isprintable() and brand else name
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "aac (ADTS)"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3 (MPEG audio)"
    return None


def _unopened(exc: BaseException, head: bytes, sndfile_error: str) -> AudioDecodeError:
    reason = _ffmpeg_reason(exc)
    found = sniff_container(head)
    where = (f"container {found} by its first bytes (codec unknown: FFmpeg cannot open its header)" if found
             else "no container was recognised")
    return AudioDecodeError(f"{where}: {reason} (libsndfile: {sndfile_error})", container=found)


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's own words (`Invalid data found when processing input`), lower-cased, without the errno and
    the '<none>' file name PyAV adds for in-memory files."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = without_object_reprs(" ".join(str(text).split()), name="the file")
    return text[:1].lower() + text[1:]


def _short(exc: BaseException) -> str:
    """libsndfile's reason without its `Error opening <object>:` preamble (the object is our BytesIO)."""
    text = without_object_reprs(" ".join(str(exc).split()), name="the file")
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith("Error opening") else text


def _import_av(source: Any, sndfile_error: str) -> Any:
    try:
        import av
    except Exception as exc:  # noqa: BLE001 - not installed, or its bundled libraries do not load
        found = sniff_container(_peek(source)) or "an unknown container"
        raise AudioDecodeError(f"libsndfile cannot read it ({sndfile_error}) and the FFmpeg decoder does not "
                               f"load ({type(exc).__name__}: {exc}); it looks like {found}; fix: {INSTALL_FFMPEG}",
                               container=found) from None
    return av


# ---- file-likes ---------------------------------------------------------------------------------------------

def _tell(source: Any) -> int | None:
    try:
        return source.tell() if hasattr(source, "read") else None
    except (OSError, ValueError):
        return None


def _rewind(source: Any, start: int | None) -> None:
    if start is not None:
        source.seek(start)


def _peek(source: Any) -> bytes:
    """The first 16 bytes, the position left where it was."""
    try:
        if not hasattr(source, "read"):
            with open(source, "rb") as fh:
                return fh.read(16)
        pos = source.tell()
        head = source.read(16)
        source.seek(pos)
        return bytes(head)
    except (OSError, ValueError):
        return b""


def _av_source(source: Any) -> Any:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else source


# ---- what decodes -------------------------------------------------------------------------------------------

def decoders() -> list[DecoderInfo]:
    """libsndfile and FFmpeg, each with its version and the formats it decodes (or why it does not load)."""
    return [_libsndfile_info(), _ffmpeg_info()]


def _libsndfile_info() -> DecoderInfo:
    try:
        import soundfile as sf

        formats = set(sf.available_formats())
        ogg = set(sf.available_subtypes("OGG")) if "OGG" in formats else set()
    except Exception as exc:  # noqa: BLE001
        return DecoderInfo(name=LIBSNDFILE, version=None, formats=(), error=f"{type(exc).__name__}: {exc}")
    have = [n.lower() for n in ("WAV", "FLAC", "OGG", "MP3", "AIFF") if n in formats]
    have += ["opus"] if "OPUS" in ogg else []
    return DecoderInfo(name=LIBSNDFILE, version=str(sf.__libsndfile_version__), formats=tuple(have))


def _ffmpeg_info() -> DecoderInfo:
    try:
        import av
    except Exception as exc:  # noqa: BLE001
        return DecoderInfo(name=FFMPEG, version=None, formats=(), error=f"{type(exc).__name__}: {exc}")
    version = f"PyAV {av.__version__}, FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}"
    have = tuple(fmt for fmt, (demuxer, codecs) in FFMPEG_FORMATS.items()
                 if _can_demux(av, demuxer) and any(_can_decode(av, c) for c in codecs))
    return DecoderInfo(name=FFMPEG, version=version, formats=have)


def _can_demux(av: Any, name: str) -> bool:
    try:
        return bool(av.format.ContainerFormat(name, "r").is_input)
    except Exception:  # noqa: BLE001 - absent from this build
        return False


def _can_decode(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
        return True
    except Exception:  # noqa: BLE001 - absent from this build
        return False


__all__ = ["AudioDecodeError", "AudioHeader", "DecodedAudio", "DecodedSpans", "DecoderInfo", "FFMPEG",
           "LIBSNDFILE", "decode", "decode_spans", "decoders", "frame_samples", "header_info", "sniff_container"]
