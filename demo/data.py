"""The demo's sample datasets, synthesized deterministically in the real layouts.

A Clotho-format audio set (tones, chirps, noise and speech-like signals; the caption CSV with file
names holding spaces, commas and quotes) and a LLaVA-Pretrain-format image set (simple scenes).
Captions describe what was synthesized, so a model can learn something real from them.

`write_clotho_split` and `write_llava` are the one writer of each layout: the demo's sets and the test
suite's (tests/tokenize_helpers.py, which adds broken files) are both written through them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from PIL import Image

from uti.assets import synth_audio, synth_image


# ---- the two layouts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClothoClip:
    """One row of a Clotho split: the file name (relative to the split folder), its five captions, and the
    audio: samples written as a WAV at `rate`, or bytes written as they are (a deliberately broken file)."""

    name: str
    captions: tuple[str, ...]
    audio: np.ndarray | bytes
    rate: int = 16000
    subtype: str | None = None  # soundfile's WAV subtype; "FLOAT" keeps a NaN sample


def write_clotho_split(root: Path, split: str, clips: Sequence[ClothoClip]) -> None:
    """`root/<split>/<file>` and `root/clotho_captions_<split>.csv` (file_name, caption_1..caption_5)."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        if isinstance(clip.audio, bytes):
            (folder / clip.name).write_bytes(clip.audio)
        else:
            sf.write(folder / clip.name, clip.audio, clip.rate, subtype=clip.subtype)
    with open(root / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name"] + [f"caption_{j}" for j in range(1, 6)])
        writer.writerows([clip.name, *clip.captions] for clip in clips)


@dataclass(frozen=True)
class LlavaImage:
    """One LLaVA-Pretrain entry: its id, image file (relative to the set's root) and one human/gpt turn;
    the image is pixels (saved as PNG) or bytes written as they are (a deliberately broken file)."""

    id: str
    file: str
    image: np.ndarray | bytes
    prompt: str
    caption: str


def write_llava(root: Path, images: Sequence[LlavaImage], *, indent: int | None = None) -> None:
    """The image files and `root/blip_laion_cc_sbu_558k.json`."""
    for im in images:
        path = root / im.file
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(im.image, bytes):
            path.write_bytes(im.image)
        else:
            Image.fromarray(im.image).save(path)
    entries = [{"id": im.id, "image": im.file, "conversations": [
        {"from": "human", "value": im.prompt}, {"from": "gpt", "value": im.caption}]} for im in images]
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries, indent=indent))


# ---- the demo's sets ---------------------------------------------------------------------------------------

_DESCRIPTIONS = {
    "tone": ("a steady tone with a soft overtone", "a pure tone holds its pitch", "a humming tone"),
    "chirp": ("a rising chirp sweeps upward", "a whistle glides from low to high", "a fast upward sweep"),
    "noise": ("a burst of hissing noise", "static hiss like rain on a roof", "broadband noise"),
    "speechlike": ("a voice-like murmur with syllables", "someone talking in a low voice", "muffled speech"),
}


def make_clotho_set(root: Path, *, clips: int = 24, rate: int = 44100) -> Path:
    kinds = list(_DESCRIPTIONS)
    for split, start, count in (("development", 0, clips - clips // 4), ("validation", clips - clips // 4, clips // 4)):
        rows = []
        for i in range(start, start + count):
            kind = kinds[i % len(kinds)]
            seconds = 0.6 + (i % 4) * 0.2  # 0.6-1.2 s: whole clips fit the demo's sequence length
            texts = _DESCRIPTIONS[kind]
            rows.append(ClothoClip(name=f"{kind} {i:03d}, take \"{i % 3}\".wav",
                                   captions=tuple(texts[j % 3] + ("" if j < 3 else f", clip {i}") for j in range(5)),
                                   audio=synth_audio(kind, seconds=seconds, sample_rate=rate, seed=i), rate=rate))
        write_clotho_split(root, split, rows)
    return root


def make_llava_set(root: Path, *, images: int = 24) -> Path:
    write_llava(root, [LlavaImage(id=f"{i:09d}", file=f"images/{i:05d}.png", image=synth_image(size=128, seed=100 + i),
                                  prompt="<image>\nWrite a short caption.",
                                  caption=f"a sunny landscape with a horizon and buildings, scene {i}")
                       for i in range(images)], indent=1)
    return root
