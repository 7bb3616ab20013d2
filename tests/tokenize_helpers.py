"""Small datasets in the real layouts for the tokenize tests, and helpers to compare outputs."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from uti.assets import synth_audio, synth_image

AUDIO = [("tone", 0.9), ("chirp", 1.6), ("noise", 0.4), ("speechlike", 1.2), ("tone", 0.7), ("chirp", 1.1)]


def make_clotho(root: Path) -> None:
    split_dir = root / "development"
    split_dir.mkdir(parents=True)
    rows = []
    for i, (kind, seconds) in enumerate(AUDIO):
        name = f"clip {i}, \"{kind}\" ü.wav"
        rate = (16000, 22050, 44100)[i % 3]
        sf.write(split_dir / name, synth_audio(kind, seconds=seconds, sample_rate=rate, seed=i), rate)
        rows.append([name] + [f"a {kind} sound, take {i}.{j}" for j in range(5)])
    (split_dir / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    rows.append(["corrupt.wav"] + ["broken"] * 5)
    nan = synth_audio("tone", seconds=0.5, sample_rate=16000)
    nan[100] = np.nan
    sf.write(split_dir / "nan.wav", nan, 16000, subtype="FLOAT")
    rows.append(["nan.wav"] + ["nan"] * 5)
    with open(root / "clotho_captions_development.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name"] + [f"caption_{j}" for j in range(1, 6)])
        writer.writerows(rows)


def make_llava(root: Path, n: int = 4) -> None:
    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(n):
        rel = f"images/{i:05d}.png"
        Image.fromarray(synth_image(size=96 + 8 * i, seed=i)).save(root / rel)
        entries.append({"id": f"{i:09d}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": f"a simple scene number {i}"}]})
    good = (root / "images/00000.png").read_bytes()
    (root / "images/trunc.png").write_bytes(good[: len(good) // 2])
    entries.append({"id": "trunc", "image": "images/trunc.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "truncated"}]})
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries))


def make_manifests(base: Path) -> list[str]:
    from sharding.manifest import make_manifest

    make_clotho(base / "clotho")
    make_llava(base / "llava")
    out = []
    for name in ("clotho", "llava"):
        path = base / f"{name}.jsonl"
        make_manifest(name, base / name, path)
        out.append(str(path))
    return out


def shard_bytes(out: Path) -> dict[str, str]:
    """SHA-256 of every shard tar and index, by relative path: equality means byte-identical outputs."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "shards").rglob("*")) if p.is_file()}


def wait_for(predicate, timeout: float = 120.0, step: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns whether it became true."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
