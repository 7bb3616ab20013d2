"""Small datasets in the real layouts for the tokenize tests, and helpers to compare outputs.

The layouts are written by the demo's writers (demo/data.py), the one place that knows them; these sets
add the broken files (corrupt and NaN WAVs, a truncated PNG) and odd file names the tests need.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from demo.data import ClothoClip, LlavaImage, write_clotho_split, write_llava
from uti.assets import synth_audio, synth_image

AUDIO = [("tone", 0.9), ("chirp", 1.6), ("noise", 0.4), ("speechlike", 1.2), ("tone", 0.7), ("chirp", 1.1)]


def make_clotho(root: Path) -> None:
    """6 clips (names with spaces, commas, quotes and a non-ASCII letter; 16-44.1 kHz), a corrupt WAV and a
    WAV holding a NaN, in one `development` split."""
    clips = []
    for i, (kind, seconds) in enumerate(AUDIO):
        rate = (16000, 22050, 44100)[i % 3]
        clips.append(ClothoClip(name=f"clip {i}, \"{kind}\" ü.wav",
                                captions=tuple(f"a {kind} sound, take {i}.{j}" for j in range(5)),
                                audio=synth_audio(kind, seconds=seconds, sample_rate=rate, seed=i), rate=rate))
    clips.append(ClothoClip(name="corrupt.wav", captions=("broken",) * 5,
                            audio=b"RIFF\x00\x00\x00\x00WAVEnot really"))
    nan = synth_audio("tone", seconds=0.5, sample_rate=16000)
    nan[100] = np.nan
    clips.append(ClothoClip(name="nan.wav", captions=("nan",) * 5, audio=nan, rate=16000, subtype="FLOAT"))
    write_clotho_split(root, "development", clips)


def make_llava(root: Path, n: int = 4) -> None:
    """n images of growing sizes and a PNG truncated to half its bytes."""
    import io

    from PIL import Image

    images = [LlavaImage(id=f"{i:09d}", file=f"images/{i:05d}.png", image=synth_image(size=96 + 8 * i, seed=i),
                         prompt="<image>\nDescribe the image.", caption=f"a simple scene number {i}")
              for i in range(n)]
    png = io.BytesIO()
    Image.fromarray(images[0].image).save(png, format="PNG")
    good = png.getvalue()
    write_llava(root, [*images, LlavaImage(id="trunc", file="images/trunc.png", image=good[: len(good) // 2],
                                           prompt="<image>", caption="truncated")])


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


def wait_for(predicate, timeout: float = 120.0, step: float = 0.02, *, what: str = "the condition") -> bool:
    """Poll `predicate` until it is true (returns True); after `timeout` seconds fail the test naming `what`
    it waited for, instead of carrying on with whatever state the deadline found. The one polling helper
    of the suite: tests never write their own deadline loop."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)
