"""The loudness scale `uti generate` decodes segmented audio codecs with (EnCodec 48 kHz).

EnCodec 48 kHz normalizes each 1 s segment by its RMS before encoding and records that scale in the
sample's meta (`scales`, one per segment); decode multiplies it back. The codes carry the shape of
the sound, the scale its level, and the LM only learns the codes. So generation needs a scale from
elsewhere: `uti train` measures the median per-segment scale of the training data once, on the driver,
and writes it to RUN/audio_scale.json; `uti generate` decodes every generated segment with it
(`--audio-scale` overrides it; a run without the file uses NEUTRAL_SCALE, about -20 dBFS RMS).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from sharding.format import list_shards
from sharding.reader import read_shard
from uti.token_space import TokenSpace

log = logging.getLogger(__name__)

SCALE_FILE = "audio_scale.json"
NEUTRAL_SCALE = 0.1  # RMS of the decoded signal when nothing better is known: a typical recording level
_ENOUGH_SEGMENTS = 2000  # the median of this many segments is stable; more only costs reading time
_PROBE = 8  # a shard whose first samples hold no audio is skipped (datasets are contiguous in the plan)


def needs_scale(space: TokenSpace) -> bool:
    """True when the token space's audio codec decodes per segment with a scale (EnCodec 48 kHz)."""
    audio = space.codecs.get("audio")
    return audio is not None and audio.params.get("segment_length") is not None


def measure_scale(inputs: list[str]) -> dict[str, Any] | None:
    """The median per-segment scale of the audio samples in the inputs' shards (every split), read in
    plan order until enough segments are seen; None when the inputs hold no audio with scales.
    A scale is the RMS of the input signal, not a property of the codec's weights, so every input
    counts (their token spaces were checked against the run's before this runs)."""
    scales: list[float] = []
    shards_read = 0
    for out in inputs:
        for ref in list_shards(out):
            shards_read += 1
            audio_here = 0
            for i, sample in enumerate(read_shard(ref.tar_path, expected_token_space=None)):
                if sample.meta.get("modality") != "audio":
                    if i >= _PROBE and not audio_here:
                        break
                    continue
                audio_here += 1
                scales.extend(float(s) for s in sample.meta.get("scales") or []
                              if isinstance(s, (int, float)) and math.isfinite(s) and s > 0)
                if len(scales) >= _ENOUGH_SEGMENTS:
                    break
            if len(scales) >= _ENOUGH_SEGMENTS:
                return _summary(scales, shards_read)
    return _summary(scales, shards_read) if scales else None


def _summary(scales: list[float], shards_read: int) -> dict[str, Any]:
    return {"scale": statistics.median(scales), "segments": len(scales), "shards_read": shards_read,
            "min": min(scales), "max": max(scales), "statistic": "median per-segment RMS scale"}


def write_scale(run: Path, inputs: list[str], space: TokenSpace) -> dict[str, Any] | None:
    """Measure and record RUN/audio_scale.json for a segmented audio codec (no-op otherwise)."""
    if not needs_scale(space):
        return None
    if (run / SCALE_FILE).is_file():  # a resumed run keeps the scale it was measured with
        try:
            return json.loads((run / SCALE_FILE).read_text())
        except ValueError:
            pass  # damaged: measure again
    found = measure_scale(inputs)
    if found is None:
        log.warning("the inputs hold no audio with per-segment scales; `uti generate --mode audio` will decode "
                    "with the neutral scale %s (set --audio-scale to choose another)", NEUTRAL_SCALE)
        return None
    (run / SCALE_FILE).write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    return found


def read_scale(run: Path) -> tuple[float, str]:
    """(scale, where it came from) for generation: RUN/audio_scale.json, else NEUTRAL_SCALE."""
    path = run / SCALE_FILE
    if path.is_file():
        try:
            scale = float(json.loads(path.read_text())["scale"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s); decoding with the neutral scale %s", path, exc, NEUTRAL_SCALE)
        else:
            if math.isfinite(scale) and scale > 0:
                return scale, str(path)
    return NEUTRAL_SCALE, "neutral default"
