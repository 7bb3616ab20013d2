"""Object storage vs local disk: shard reads and tokenize end to end, in the same run.

    python -m bench.bench_storage            # the measurement (minutes)
    python -m bench.bench_storage --quick    # tiny inputs: checks the script runs (numbers meaningless)

The S3 endpoint is moto's server mode on 127.0.0.1 in a thread of this process (as in the tests): no
network, but every request goes through HTTP, botocore's signing and moto's request handling, and moto's
CPU cost lands on this machine. Real S3 has more latency and more bandwidth; read these numbers as
"the client-side cost of the object-store path", not as S3's speed.

1. **Shard reads** (one process, the training reader's parser `sharding.reader.read_shard`, every shard
   start to end with the index checks): MB/s and samples/s from local disk, from the bucket, and from the
   bucket with the training read-ahead (`sharding.prefetch`, 2 shards ahead).
2. **Tokenize end to end**: the same audio set with media and OUT on local disk, then with media and OUT in
   the bucket (`uti manifest --root s3://...`, `uti tokenize --out s3://...`), same actors, same Ray setup.

Merged into bench/results.json under "storage" (other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

BUCKET = "uti-bench"
_KEY_ID, _SECRET = "AKIAUTIBENCH00000000", "uti-bench-not-a-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[Any, str]:
    """moto's S3 server on loopback, its settings in this process's environment (and so in every Ray
    process this process starts: uti.ray_local forwards AWS_*)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access-log line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": _KEY_ID, "AWS_SECRET_ACCESS_KEY": _SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    from sharding.storage import filesystem

    fs, _ = filesystem(f"s3://{BUCKET}")
    fs.mkdir(BUCKET)
    return server, endpoint


def upload(local: Path, url: str) -> None:
    from sharding.storage import filesystem

    fs, root = filesystem(url)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")


def read_rate(out: str, *, prefetch: bool = False, repeats: int = 1) -> dict[str, Any]:
    """Read every shard of OUT start to end (index checks on), `repeats` times; MB/s and samples/s."""
    from sharding.format import list_shards
    from sharding.prefetch import ShardPrefetcher, shard_range
    from sharding.reader import read_shard

    refs = list_shards(out)
    fetcher = ShardPrefetcher() if prefetch else None
    samples = nbytes = 0
    started = time.perf_counter()
    for _ in range(repeats):
        for k, ref in enumerate(refs):
            source = None
            if fetcher is not None:
                ahead = [shard_range(r, 0, r.num_samples - 1, drains=True) for r in refs[k: k + fetcher.limits.shards]]
                for r in ahead:
                    if r is not None:
                        fetcher.request(r)
                source = fetcher.take(ref.tar_path, ahead[0].start) if ahead and ahead[0] else None
            for _sample in read_shard(ref.tar_path, expected_token_space=ref.index["token_space_id"], index=ref.index,
                                      source=source):
                samples += 1
            nbytes += int(ref.index["tar_bytes"])
    seconds = time.perf_counter() - started
    if fetcher is not None:
        fetcher.close()
    return {"shards": len(refs) * repeats, "samples": samples, "megabytes": nbytes / 1e6, "seconds": seconds,
            "mb_per_s": nbytes / 1e6 / seconds, "samples_per_s": samples / seconds}


def tokenize(manifest: Path, out: str, *, actors: int, shard_samples: int) -> dict[str, Any]:
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    started = time.perf_counter()
    job = run_tokenize(TokenizeConfig(manifests=(str(manifest),), out=out, num_actors=actors, progress=False,
                                      shard_samples=shard_samples))
    t = job["throughput"]
    return {"wall_seconds": time.perf_counter() - started, "samples": job["counts"]["samples"],
            "audio_seconds_per_second": t.get("audio_seconds_per_second"),
            "tokens_per_second": t.get("tokens_per_second"), "startup_seconds": t.get("startup_seconds")}


def run(*, quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    from bench.data import make_audio_set
    from sharding.manifest import make_manifest

    work = Path(workdir or tempfile.mkdtemp(prefix="uti-bench-storage-"))
    server, endpoint = start_s3()
    try:
        manifest, audio_seconds = make_audio_set(work / "media", scale=0.1 if quick else 1.0)
        media_url = f"s3://{BUCKET}/media/clotho"
        upload(work / "media" / "clotho", media_url)
        s3_manifest = work / "audio_s3.jsonl"
        make_manifest("clotho", media_url, s3_manifest)
        actors, shard_samples = 1, 2 if quick else 8
        # Alternating rounds (local, S3, local, S3): the first run of a process pays cold caches (codec weights,
        # imports), which would otherwise count against whichever storage goes first. The fastest round counts.
        rounds: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
        for k in range(1 if quick else 2):
            rounds["local"].append(tokenize(manifest, str(work / f"tok{k}"), actors=actors, shard_samples=shard_samples))
            rounds["s3"].append(tokenize(s3_manifest, f"s3://{BUCKET}/tok{k}", actors=actors, shard_samples=shard_samples))
        end_to_end = {name: min(runs, key=lambda r: r["wall_seconds"]) | {"rounds": len(runs)}
                      for name, runs in rounds.items()}
        repeats = 1 if quick else 5
        reads = {
            "local": read_rate(str(work / "tok0"), repeats=repeats),
            "s3": read_rate(f"s3://{BUCKET}/tok0", repeats=repeats),
            "s3_read_ahead": read_rate(f"s3://{BUCKET}/tok0", prefetch=True, repeats=repeats),
        }
    finally:
        server.stop()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"audio_seconds": audio_seconds, "actors": actors, "shard_samples": shard_samples,
            "endpoint": "moto server on loopback, same process", "shard_read": reads, "tokenize": end_to_end}


def table(r: dict[str, Any]) -> str:
    lines = ["| storage | shard read MB/s | samples/s | tokenize wall s | audio s/s |", "|---|---|---|---|---|"]
    for name in ("local", "s3", "s3_read_ahead"):
        read = r["shard_read"][name]
        tok = r["tokenize"].get(name)
        wall = f"{tok['wall_seconds']:.1f}" if tok else "-"
        rate = f"{tok['audio_seconds_per_second']:.2f}" if tok and tok["audio_seconds_per_second"] else "-"
        lines.append(f"| {name} | {read['mb_per_s']:.1f} | {read['samples_per_s']:.0f} | {wall} | {rate} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks the script runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the inputs and outputs here")
    args = parser.parse_args(argv)
    started = time.time()
    result = run(quick=args.quick, workdir=args.workdir)
    print(table(result))
    from bench.results import merge

    reads, tok = result["shard_read"], result["tokenize"]
    ratios = {
        "storage: shard read MB/s, S3 loopback / local": reads["s3"]["mb_per_s"] / reads["local"]["mb_per_s"],
        "storage: shard read MB/s, S3 read-ahead / S3": reads["s3_read_ahead"]["mb_per_s"] / reads["s3"]["mb_per_s"],
        "storage: tokenize wall, local / S3": tok["local"]["wall_seconds"] / tok["s3"]["wall_seconds"],
    }
    merge(args.out, sections={"storage": {**result, "quick": args.quick, "seconds": time.time() - started,
                                          "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}},
          ratios={} if args.quick else ratios)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
