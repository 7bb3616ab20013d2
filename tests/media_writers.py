"""Audio files in the containers real downloads come in (m4a/AAC, ogg and webm opus), written by PyAV
(FFmpeg) itself, for the decoder and dataset tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# Encoder delay and padding the decoders leave: an AAC stream decodes to whole 1024-sample frames (the edit
# list removes the priming, the last frame's padding stays); opus trims its 312-sample pre-skip and the end
# through the final granule position, within one 20 ms frame.
AAC_SLACK, OPUS_SLACK = 2 * 1024, 960


def _signal(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (330 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


def write_clip(path: Path, *, fmt: str, codec: str, rate: int, seconds: float, channels: int,
               options: dict | None = None, signal: np.ndarray | None = None) -> Path:
    """A clip encoded by PyAV (FFmpeg) itself: `signal` (channels, samples) float32, else a tone."""
    x = _signal(seconds, rate, channels) if signal is None else signal
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        sample_fmt = "s16" if codec == "pcm_s16le" else "fltp"
        for i in range(0, x.shape[1], 1024):
            part = x[:, i:i + 1024]
            if sample_fmt == "s16":
                data = np.round(part.T * 32767).astype(np.int16).reshape(1, -1)
            else:
                data = np.ascontiguousarray(part)
            frame = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def m4a(path: Path, seconds: float = 3.0, *, rate: int = 44100, channels: int = 2, faststart: bool = False) -> Path:
    return write_clip(path, fmt="ipod", codec="aac", rate=rate, seconds=seconds, channels=channels,
                      options={"movflags": "faststart"} if faststart else None)


def opus(path: Path, seconds: float = 2.0, *, container: str = "ogg", channels: int = 1) -> Path:
    return write_clip(path, fmt=container, codec="libopus", rate=48000, seconds=seconds, channels=channels)
