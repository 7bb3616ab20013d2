"""Deterministic benchmark inputs in the real layouts (Clotho-style WAVs at 44.1 kHz, LLaVA-style PNGs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile as sf
from PIL import Image

from uti.assets import AUDIO_KINDS, synth_audio, synth_image

# About 60 s of audio in clips of 1-30 s.
CLIP_SECONDS = (1.0, 2.0, 3.0, 4.5, 6.5, 13.0, 30.0)


def make_audio_set(root: Path, *, scale: float = 1.0, rate: int = 44100) -> tuple[Path, float]:
    """Write the clips and a Clotho CSV; return (manifest path, total seconds)."""
    from sharding.manifest import make_manifest

    split = root / "clotho" / "development"
    split.mkdir(parents=True, exist_ok=True)
    rows, total = [], 0.0
    for i, seconds in enumerate(CLIP_SECONDS):
        seconds = max(0.5, seconds * scale)
        name = f"bench_{i:02d}.wav"
        sf.write(split / name, synth_audio(AUDIO_KINDS[i % 4], seconds=seconds, sample_rate=rate, seed=i), rate)
        rows.append([name] + [f"benchmark clip {i} caption {j}" for j in range(5)])
        total += seconds
    with open(root / "clotho" / "clotho_captions_development.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name"] + [f"caption_{j}" for j in range(1, 6)])
        writer.writerows(rows)
    manifest = root / "audio.jsonl"
    make_manifest("clotho", root / "clotho", manifest)
    return manifest, total


def make_image_set(root: Path, *, count: int = 64) -> Path:
    from sharding.manifest import make_manifest

    (root / "llava" / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        rel = f"images/{i:05d}.png"
        Image.fromarray(synth_image(size=160, seed=i)).save(root / "llava" / rel)
        entries.append({"id": f"{i:06d}", "image": rel,
                        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"scene {i}"}]})
    (root / "llava" / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries))
    manifest = root / "images.jsonl"
    make_manifest("llava", root / "llava", manifest, split_fractions={"train": 1.0})
    return manifest
