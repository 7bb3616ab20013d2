"""The length-bucket rule of the encode policy (uti.codecs.batching), in a module that imports nothing
heavy: the tokenize driver, which loads no codec and never imports torch, groups a shard's rows by it
so that a chunk fills whole forward passes."""

from __future__ import annotations

import math

# The frame rate the driver assumes for ordering rows by bucket before it knows the codec (EnCodec's 75 Hz).
# Only how full the passes are depends on it, never a code: the adapters bucket by their own frames.
PROXY_FRAME_RATE = 75.0


def bucket_frames(frames: int) -> int:
    """The bucket of an item of `frames` frames: rounded up to a multiple of 2^(bit_length - 3), so each
    octave holds 4 buckets and padding is under 25% (under 3% for 10 s of 75 Hz EnCodec frames)."""
    if frames < 1:
        raise ValueError(f"an item needs at least one frame, got {frames}")
    step = 1 << max(0, frames.bit_length() - 3)
    return -(-frames // step) * step


def duration_bucket(seconds: float | None) -> int:
    """The bucket a clip of `seconds` most likely falls in (0 when the manifest gives no duration)."""
    if not seconds or not math.isfinite(seconds) or seconds <= 0:
        return 0
    return bucket_frames(max(1, math.ceil(seconds * PROXY_FRAME_RATE)))
