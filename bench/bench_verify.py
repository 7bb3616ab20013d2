"""Verify read rate: MB/s of shard data per core for the structural checks (checks 1-6, 9-10).

Shards of realistic size are written with the real writer (random valid tokens: 30 s audio clips and
images, captions), then each shard is scanned by the same function the Ray tasks run, on one core.
Target: >= 200 MB/s per core.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _write_dataset(out: Path, *, shards: int, samples_per_shard: int, seed: int = 0):
    from sharding.writer import write_shard
    from uti.tokenizer import UnifiedTokenizer

    space = UnifiedTokenizer().space
    space.write(out)
    rng = np.random.default_rng(seed)
    levels = space.audio_levels
    n_q, image = len(levels), space.range("image")
    text = space.range("text")
    for s in range(shards):
        samples = []
        for i in range(samples_per_shard):
            sid = f"bench:{s:03d}/{i:05d}"
            caption = rng.integers(text.start, text.end, 120, dtype=np.int64).astype(np.uint32)
            if i % 8:  # mostly 30 s audio clips, as in AudioCaps/Clotho
                frames = 2250
                codes = rng.integers(0, levels[0].size, (frames, n_q))
                tokens = (codes + np.array([lv.start for lv in levels])).reshape(-1).astype(np.uint32)
                meta = {"modality": "audio", "sample_rate": 24000, "channels": 1, "n_samples": frames * 320,
                        "n_frames": frames, "n_q": n_q, "frame_rate": 75.0}
            else:
                tokens = rng.integers(image.start, image.end, 256, dtype=np.int64).astype(np.uint32)
                meta = {"modality": "image", "proc_size": [64, 64], "grid": [16, 16]}
            meta |= {"id": sid, "split": "train", "token_space_id": space.id, "captions": ["x" * 120],
                     "caption_token_lengths": [120], "source": f"/data/{i}", "source_sha256": f"{s:04d}{i:060d}"}
            samples.append({"id": sid, "tokens": tokens, "text": caption, "meta": meta})
        write_shard(str(out), split="train", shard=f"shard-{s:06d}", token_space=space, samples=samples)
    return space


def run(*, quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    from verify.checks import scan_shard
    from verify.dataset import ShardTask
    from sharding.format import list_shards

    out = Path(tempfile.mkdtemp(prefix="uti-bench-verify-", dir=workdir))
    space = _write_dataset(out, shards=2 if quick else 4, samples_per_shard=16 if quick else 200)
    refs = list_shards(str(out))
    tasks = [ShardTask(split=r.split, name=r.name, tar_path=str(r.tar_path), index_path=str(r.index_path), index=r.index)
             for r in refs]
    for task in tasks[:1]:
        scan_shard(task, space)  # warm the page cache and imports: we measure the checks, not the disk
    total_bytes, seconds, clean = 0, 0.0, True
    for task in tasks:
        start = time.perf_counter()
        summary = scan_shard(task, space, max_seq_len=4096)
        seconds += time.perf_counter() - start
        total_bytes += summary.tar_bytes
        clean &= summary.clean
    if not clean:
        raise RuntimeError("the benchmark dataset did not pass the structural checks")
    return {"bytes": total_bytes, "seconds": seconds, "mb_per_s_per_core": total_bytes / 1e6 / seconds}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    return {"verify MB/s per core (structural checks)": r["mb_per_s_per_core"]}
