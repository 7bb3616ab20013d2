"""Training input benchmark: per-rank input throughput for 1, 2 and 8 simulated ranks on the
same data, and the time to resume at 90% of an epoch against the time to read the epoch.

    python3 -m bench.bench_input                 # 100k text samples in 20 shards
    python3 -m bench.bench_input --samples 5000  # quick

Text-only samples (no codec runs), written by the real writer; the readers are train.stream's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sharding.writer import write_shard
from train.config import TrainConfig
from train.sequences import Specials
from train.stream import BatchStream
from uti.tokenizer import UnifiedTokenizer


def write_data(root: Path, tok: UnifiedTokenizer, samples: int, shards: int) -> Path:
    out = root / "OUT"
    per = -(-samples // shards)
    rng = np.random.default_rng(0)
    words = ["a dog barks", "rain on a roof", "a car passes by", "birds at dawn", "people talking in a hall"]
    encoded = {w: np.asarray(tok.encode_text(w), dtype=np.uint32) for w in words}
    for k in range(shards):
        rows = []
        for i in range(k * per, min(samples, (k + 1) * per)):
            w = words[int(rng.integers(len(words)))]
            rows.append({"id": f"bench:{i:07d}", "tokens": np.zeros(0, np.uint32), "text": encoded[w],
                         "meta": {"id": f"bench:{i:07d}", "split": "train", "modality": "text",
                                  "token_space_id": tok.space.id, "caption_token_lengths": [len(encoded[w])]}})
        write_shard(out, split="train", shard=f"shard-{k:06d}", token_space=tok.space, samples=rows)
    tok.space.write(out)
    return out


def stream(out: Path, tok: UnifiedTokenizer, *, rank: int, world: int) -> BatchStream:
    cfg = TrainConfig(data=(str(out),), out="unused", seq_len=1024, batch_size=8, mix={"text": 1.0})
    return BatchStream([{"out": str(out), "token_space_id": tok.space.id}], cfg=cfg, sp=Specials.from_space(tok.space),
                       vocab_size=tok.space.vocab_size, rank=rank, world_size=world)


def throughput(out: Path, tok: UnifiedTokenizer, world: int, seconds: float) -> dict:
    """Rank 0 of `world`: batches for about `seconds`; samples/s and tokens/s (non-pad) per rank."""
    s = stream(out, tok, rank=0, world=world)
    t0 = time.perf_counter()
    tokens = 0
    while time.perf_counter() - t0 < seconds:
        b = s.next_batch()
        tokens += int((b["task_ids"] >= 0).sum())
    dt = time.perf_counter() - t0
    return {"world": world, "samples_per_s": s.stats.samples / dt, "tokens_per_s": tokens / dt}


def resume_at(out: Path, tok: UnifiedTokenizer, samples: int, fraction: float) -> dict:
    """Read the epoch's first `fraction` through the stream, take the state, then time (a) a fresh
    stream + load_state_dict + the first batch, against (b) reading the whole epoch."""
    s = stream(out, tok, rank=0, world=1)
    st = s.streams["0:text"]
    t0 = time.perf_counter()
    while st.taken < int(samples * fraction):
        st._read_one()
    t_part = time.perf_counter() - t0
    state = json.loads(json.dumps(s.state_dict()))
    t0 = time.perf_counter()
    resumed = stream(out, tok, rank=0, world=1)
    resumed.load_state_dict(state)
    resumed.next_batch()
    t_resume = time.perf_counter() - t0
    return {"fraction": fraction, "read_to_fraction_s": t_part, "epoch_read_s_est": t_part / fraction,
            "resume_s": t_resume}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    tok = UnifiedTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = write_data(Path(tmp), tok, args.samples, args.shards)
        result = {"samples": args.samples, "shards": args.shards, "write_s": time.perf_counter() - t0,
                  "throughput": [throughput(out, tok, w, args.seconds) for w in (1, 2, 8)],
                  "resume": resume_at(out, tok, args.samples, 0.9)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
