"""The demo's sample datasets, synthesized deterministically in the real layouts.

A Clotho-format audio set (tones, chirps, noise and speech-like signals; the caption CSV with file
names holding spaces, commas and quotes) and a LLaVA-Pretrain-format image set (simple scenes).
Captions describe what was synthesized, so a model can learn something real from them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile as sf
from PIL import Image

from uti.assets import synth_audio, synth_image

_DESCRIPTIONS = {
    "tone": ("a steady tone with a soft overtone", "a pure tone holds its pitch", "a humming tone"),
    "chirp": ("a rising chirp sweeps upward", "a whistle glides from low to high", "a fast upward sweep"),
    "noise": ("a burst of hissing noise", "static hiss like rain on a roof", "broadband noise"),
    "speechlike": ("a voice-like murmur with syllables", "someone talking in a low voice", "muffled speech"),
}


def make_clotho_set(root: Path, *, clips: int = 24, rate: int = 44100) -> Path:
    kinds = list(_DESCRIPTIONS)
    for split, start, count in (("development", 0, clips - clips // 4), ("validation", clips - clips // 4, clips // 4)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(start, start + count):
            kind = kinds[i % len(kinds)]
            seconds = 0.6 + (i % 4) * 0.2  # 0.6-1.2 s: whole clips fit the demo's sequence length
            name = f"{kind} {i:03d}, take \"{i % 3}\".wav"
            sf.write(folder / name, synth_audio(kind, seconds=seconds, sample_rate=rate, seed=i), rate)
            texts = _DESCRIPTIONS[kind]
            rows.append([name] + [texts[j % 3] + ("" if j < 3 else f", clip {i}") for j in range(5)])
        with open(root / f"clotho_captions_{split}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name"] + [f"caption_{j}" for j in range(1, 6)])
            writer.writerows(rows)
    return root


def make_llava_set(root: Path, *, images: int = 24) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(images):
        rel = f"images/{i:05d}.png"
        Image.fromarray(synth_image(size=128, seed=100 + i)).save(root / rel)
        entries.append({"id": f"{i:09d}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nWrite a short caption."},
            {"from": "gpt", "value": f"a sunny landscape with a horizon and buildings, scene {i}"}]})
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries, indent=1))
    return root
