"""Training input: tokens/s the shard reader + sequence packer sustain in ONE process, against the
tokens/s the tiny model trains at with two Ray Train workers. Target: >= 10x (the input pipeline is
never the bottleneck)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _write_dataset(out: Path, *, samples: int, seed: int = 0) -> Any:
    """Short clips (0.5-1.2 s) and images with captions: what the tiny model's sequence length fits."""
    from sharding.writer import write_shard
    from uti.tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer()
    space = tok.space
    space.write(out)
    rng = np.random.default_rng(seed)
    levels, image = space.audio_levels, space.range("image")
    per_shard = 64
    for s in range(0, samples, per_shard):
        rows = []
        for i in range(s, min(samples, s + per_shard)):
            caption = f"benchmark caption number {i}, a sound or a scene"
            text = tok.encode_text(caption)
            if i % 3:
                frames = int(rng.integers(38, 90))
                codes = rng.integers(0, levels[0].size, (frames, len(levels)))
                tokens = (codes + np.array([lv.start for lv in levels])).reshape(-1).astype(np.uint32)
                meta = {"modality": "audio", "sample_rate": 24000, "channels": 1, "n_samples": frames * 320,
                        "n_frames": frames, "n_q": len(levels), "frame_rate": 75.0}
            else:
                tokens = rng.integers(image.start, image.end, 256, dtype=np.int64).astype(np.uint32)
                meta = {"modality": "image", "proc_size": [64, 64], "grid": [16, 16]}
            sid = f"bench:{i:06d}"
            meta |= {"id": sid, "split": "train", "token_space_id": space.id, "captions": [caption],
                     "caption_token_lengths": [int(text.size)]}
            rows.append({"id": sid, "tokens": tokens, "text": text, "meta": meta})
        write_shard(str(out), split="train", shard=f"shard-{s // per_shard:06d}", token_space=space, samples=rows)
    (out / "job.json").write_text('{"config": %s}' % __import__("json").dumps(tok.config.to_dict()))
    return space


def input_rate(out: Path, space, *, batches: int, seq_len: int, batch_size: int) -> dict[str, Any]:
    from train.config import TrainConfig
    from train.sequences import Specials
    from train.stream import BatchStream

    cfg = TrainConfig(data=(str(out),), out=str(out / "_unused_run"), seq_len=seq_len, batch_size=batch_size)
    stream = BatchStream([{"out": str(out), "token_space_id": space.id}], cfg=cfg, sp=Specials.from_space(space),
                         vocab_size=space.vocab_size, rank=0, world_size=1)
    stream.next_batch()  # opens the first shard
    pad = space.special("<pad>")
    tokens, start = 0, time.perf_counter()
    for _ in range(batches):
        tokens += int((stream.next_batch()["input_ids"] != pad).sum())
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def model_rate(out: Path, run: Path, *, steps: int, seq_len: int, batch_size: int, num_workers: int = 2) -> dict[str, Any]:
    from train.config import TrainConfig
    from train.runner import train

    result = train(TrainConfig(data=(str(out),), out=str(run), steps=steps, num_workers=num_workers, seq_len=seq_len,
                               batch_size=batch_size))
    return {"tokens_per_s": result.summary["tokens_per_s"], "steps": result.summary["steps"],
            "data_fraction": result.summary["data_fraction"]}


def run(*, quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="uti-bench-train-", dir=workdir))
    space = _write_dataset(base / "data", samples=96 if quick else 768)
    seq_len, batch_size = 1024, 4
    inp = input_rate(base / "data", space, batches=10 if quick else 60, seq_len=seq_len, batch_size=batch_size)
    # quick: 4 steps, the fewest whose rate leaves out the warm-up step and still averages several (summarize)
    # quick runs the loop in this process (--num-workers 0): its numbers are meaningless anyway, and Ray
    # Train's start (seconds of worker processes) is most of a 4-step run
    model = model_rate(base / "data", base / "run", steps=4 if quick else 40, seq_len=seq_len, batch_size=batch_size,
                       num_workers=0 if quick else 2)
    return {"input": inp, "model": model}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    return {"train input tokens/s / model tokens/s": r["input"]["tokens_per_s"] / r["model"]["tokens_per_s"]}
