"""Tokenization throughput: `uti tokenize` against the codec's own limit and against two peer pipelines.

(a) limit: a bare loop calling the same codec on pre-loaded, pre-resampled tensors, best batch size,
    one thread (what one actor gets).
(b) `uti tokenize` end to end, files -> shards, one actor with one thread (and two actors for scaling).
(c) a plain Hugging Face `datasets.map(num_proc=N)` pipeline: decode + resample + encode + save_to_disk.
(d) a plain Ray Data pipeline: read -> `map_batches` on an actor pool -> `write_webdataset`.
(e) `python -m bench.bench_tokenize`: `uti tokenize` as a user runs it (default flags, its own
    local Ray, wall clock from the command starting to its exit) against a bare loop over the same clips
    on pre-loaded tensors with torch threads on every core: the ratio `end to end / bare codec, all cores`
    at 600 s of audio (1 h with --hour, images with --images N), scaling --num-actors 1 -> 2, and start-up
    time and driver RSS at 100k rows (600k with --with-600k). Merged into bench/results.json.
All use the same codec adapter and weights, so the differences are the pipelines'.
Throughput is audio-seconds per second. (b) is reported two ways: steady state (from the moment the
actors are ready, as a long job sees it; used against the limit) and end to end including actor start
and codec load (used against (c) and (d), which also pay their own model loads).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rows(manifest: Path):
    from sharding.manifest import read_manifest

    return read_manifest(manifest)


def bare_codec_limit(manifest: Path, *, threads: int = 1, modality: str = "audio", device: str = "cpu") -> dict[str, Any]:
    """(a): the best batch size over a few candidates; loading and resampling are outside the timing."""
    import torch

    from sharding.media import AudioSpec, load_audio, load_image
    from uti.config import LimitsConfig, load_config
    from uti.tokenizer import UnifiedTokenizer

    torch.set_num_threads(threads)
    tok = UnifiedTokenizer(load_config("default"), modalities=(modality,), device=device)
    rows = _rows(manifest)
    if modality == "audio":
        spec = AudioSpec(sample_rate=tok.audio.sample_rate, channels=tok.audio.channels)
        data = [load_audio(r, spec=spec, limits=LimitsConfig()).data for r in rows]
        seconds = sum(d.shape[-1] for d in data) / tok.audio.sample_rate
        encode = tok.encode_audios
        sizes = (1, 2, 4, 8)
    else:
        data = [load_image(r, proc_size=tok.image.proc_size[0], limits=LimitsConfig()).data for r in rows]
        seconds = float(len(data))
        encode = tok.encode_images
        sizes = (1, 8, 32, 64)
    encode(data[:1])  # warm-up: first-call allocations are not part of the limit
    best = None
    for size in sizes:
        start = time.perf_counter()
        for i in range(0, len(data), size):
            encode(data[i: i + size])
        elapsed = time.perf_counter() - start
        if best is None or elapsed < best[1]:
            best = (size, elapsed)
    return {"units": seconds, "seconds": best[1], "rate": seconds / best[1], "batch_size": best[0]}


def uti_tokenize(manifest: Path, out: Path, *, num_actors: int, address: str | None = None,
                 gpus_per_actor: float | None = None) -> dict[str, Any]:
    """(b): the real job; Ray must already be initialised (or `address` given) so startup is not timed."""
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    job = run_tokenize(TokenizeConfig(manifests=(str(manifest),), out=str(out), num_actors=num_actors,
                                      cpus_per_actor=1.0, shard_seconds=10.0, batch_seconds=10.0,
                                      progress=False, address=address, gpus_per_actor=gpus_per_actor))
    total = time.perf_counter() - start
    t = job["throughput"]
    units = t["audio_seconds"] if t["audio_seconds"] else float(job["counts"]["samples"])
    return {"units": units, "seconds": total, "rate": units / total, "steady_seconds": t["processing_seconds"],
            "steady_rate": units / t["processing_seconds"], "busy_fraction": job["actors"]["busy_fraction"]}


def _hf_encode(batch: dict, *, sample_rate: int, channels: int) -> dict:
    """Top-level so `datasets` can pickle it to its worker processes."""
    import torch

    from sharding.manifest import ManifestRow
    from sharding.media import AudioSpec, load_audio
    from uti.config import LimitsConfig

    global _HF_TOK
    if "_HF_TOK" not in globals():
        from uti.tokenizer import UnifiedTokenizer

        torch.set_num_threads(1)
        _HF_TOK = UnifiedTokenizer(modalities=("audio",))
    spec = AudioSpec(sample_rate=sample_rate, channels=channels)
    wavs = [load_audio(ManifestRow.from_dict(json.loads(r)), spec=spec, limits=LimitsConfig()).data for r in batch["row"]]
    encoded = _HF_TOK.encode_audios(wavs)
    return {"tokens": [ids.tolist() for ids, _ in encoded], "meta": [json.dumps(m) for _, m in encoded]}


def hf_datasets_map(manifest: Path, out: Path, *, num_proc: int) -> dict[str, Any]:
    """(c): what a user would write with `datasets` alone."""
    import datasets

    rows = _rows(manifest)
    seconds = sum(r.duration or 0.0 for r in rows)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ds = datasets.Dataset.from_dict({"row": [r.to_json() for r in rows]})
    ds = ds.map(_hf_encode, batched=True, batch_size=2, num_proc=num_proc, remove_columns=["row"],
                fn_kwargs={"sample_rate": 24000, "channels": 1}, load_from_cache_file=False)
    ds.save_to_disk(str(out))
    elapsed = time.perf_counter() - start
    return {"units": seconds, "seconds": elapsed, "rate": seconds / elapsed}


class _RayDataEncoder:
    def __init__(self):
        import torch

        from uti.tokenizer import UnifiedTokenizer

        torch.set_num_threads(1)
        self.tok = UnifiedTokenizer(modalities=("audio",))

    def __call__(self, batch: dict) -> dict:
        import torch

        encoded = self.tok.encode_audios([torch.from_numpy(np.asarray(w, dtype=np.float32)[None]) for w in batch["wav"]])
        # Ray Data's default WebDataset encoder serializes by extension: .npy via np.save, .json via json.dumps.
        return {"__key__": list(batch["key"]), "tokens.npy": [ids for ids, _ in encoded],
                "json": [json.dumps(meta) for _, meta in encoded]}


def _ray_data_read(row: dict) -> dict:
    from sharding.manifest import ManifestRow
    from sharding.media import AudioSpec, load_audio
    from uti.config import LimitsConfig

    r = ManifestRow.from_dict(json.loads(row["row"]))
    wav = load_audio(r, spec=AudioSpec(sample_rate=24000, channels=1), limits=LimitsConfig()).data
    return {"key": r.key.replace(".", "_").replace("/", "_"), "wav": wav.numpy()[0]}


def ray_data_pipeline(manifest: Path, out: Path, *, actors: int) -> dict[str, Any]:
    """(d): plain Ray Data with an actor pool and write_webdataset; Ray must already be initialised."""
    import ray

    rows = _rows(manifest)
    seconds = sum(r.duration or 0.0 for r in rows)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ds = ray.data.from_items([{"row": r.to_json()} for r in rows])
    ds = ds.map(_ray_data_read, num_cpus=0.5)
    ds = ds.map_batches(_RayDataEncoder, batch_size=2, concurrency=actors, num_cpus=1, batch_format="numpy")
    ds.write_webdataset(str(out))
    elapsed = time.perf_counter() - start
    return {"units": seconds, "seconds": elapsed, "rate": seconds / elapsed}


def two_node_scaling(manifest: Path, out: Path) -> dict[str, Any]:
    """(b) with two actors on a two-node `ray.cluster_utils.Cluster` (1 CPU per node for codecs)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        return uti_tokenize(manifest, out, num_actors=2, address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)


def run(*, quick: bool = False, workdir: Path | None = None, audio_scale: float = 1.0, address: str | None = None,
        gpus_per_actor: float | None = None) -> dict[str, Any]:
    """With `address` the uti and Ray Data pipelines run on that cluster (outputs in `workdir`, which must
    then be shared storage); with `gpus_per_actor` > 0 the codec limit is measured on this machine's GPU."""
    import ray

    from bench.data import make_audio_set, make_image_set

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(workdir or tempfile.mkdtemp(prefix="uti-bench-"))
    audio_manifest, _ = make_audio_set(work / "audio", scale=0.1 if quick else audio_scale)
    image_manifest = make_image_set(work / "img", count=8 if quick else 64)
    device = "cuda" if gpus_per_actor else "cpu"
    results: dict[str, Any] = {"a_limit": bare_codec_limit(audio_manifest, device=device)}
    from uti.ray_local import connect

    # A Ray the caller already started (bench.run --quick shares one with the train benchmark; a test's
    # session Ray) is used as is and left running: starting and stopping one costs seconds of CPU on 2 cores.
    started = connect(address, num_cpus=None if address else 3)
    gpu = {"gpus_per_actor": gpus_per_actor}
    try:
        results["b_uti_1_actor"] = uti_tokenize(audio_manifest, work / "b1", num_actors=1, **gpu)
        results["b_uti_2_actors"] = uti_tokenize(audio_manifest, work / "b2", num_actors=2, **gpu)
        results["d_ray_data"] = ray_data_pipeline(audio_manifest, work / "d", actors=1)
        results["image_b_uti"] = uti_tokenize(image_manifest, work / "ib", num_actors=1, **gpu)
    finally:
        if started:
            ray.shutdown()
    results["c_hf_datasets"] = hf_datasets_map(audio_manifest, work / "c", num_proc=2)
    results["image_a_limit"] = bare_codec_limit(image_manifest, modality="image", device=device)
    if not quick and address is None:
        results["b_two_node_2_actors"] = two_node_scaling(audio_manifest, work / "b2n")
    return results


def ratios(r: dict[str, Any]) -> dict[str, float]:
    out = {
        "b/a (steady state vs codec limit)": r["b_uti_1_actor"]["steady_rate"] / r["a_limit"]["rate"],
        "b/c (end to end vs HF datasets.map)": r["b_uti_2_actors"]["rate"] / r["c_hf_datasets"]["rate"],
        "b/d (end to end vs Ray Data, 1 actor each)": r["b_uti_1_actor"]["rate"] / r["d_ray_data"]["rate"],
        "scaling 2 actors / 1 actor (steady)": r["b_uti_2_actors"]["steady_rate"] / r["b_uti_1_actor"]["steady_rate"],
        "image b/a (steady state vs codec limit)": r["image_b_uti"]["steady_rate"] / r["image_a_limit"]["rate"],
    }
    if "b_two_node_2_actors" in r:
        out["scaling two nodes / 1 actor (steady)"] = r["b_two_node_2_actors"]["steady_rate"] / r["b_uti_1_actor"]["steady_rate"]
    return out


def startup_at_scale(rows: int, work: Path) -> dict[str, Any]:
    """Start-up of `uti tokenize` on an image manifest of `rows` rows: seconds from the
    command starting to its first chunk going to a loaded codec actor, and the driver's peak RSS by then.

    Every row names the same tiny PNG (ids differ), so the manifest is written in seconds; the run is
    stopped (SIGINT, a clean stop) once the driver logs that line, as nothing after it is start-up.
    """
    import re
    import signal
    import subprocess
    import sys

    from PIL import Image

    from sharding.manifest import ManifestRow
    from uti.assets import synth_image

    work.mkdir(parents=True, exist_ok=True)
    image = work / "tiny.png"
    Image.fromarray(synth_image(size=32, seed=0)).save(image)
    manifest = work / f"images_{rows}.jsonl"
    splits = ["train"] * 98 + ["val", "test"]
    with open(manifest, "w", encoding="utf-8") as fh:  # ids zero-padded: already in canonical (sorted) order
        for i in range(rows):
            fh.write(ManifestRow(id=f"scale:{i:09d}", dataset="scale", modality="image", path=str(image),
                                 captions=(f"a small picture, number {i}",), split=splits[i % 100]).to_json() + "\n")
    out = work / f"out_{rows}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "uti.cli", "-v", "tokenize", "--manifest", str(manifest), "--out", str(out),
           "--no-progress"]
    started = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found = None
    try:
        for line in proc.stderr:
            m = re.search(r"first (?:shard|chunk) sent to a codec actor ([\d.]+) s after the command started "
                          r"\(driver peak RSS (\d+) MB\)", line)
            if m:
                found = {"startup_seconds": float(m.group(1)), "driver_peak_rss_mb": float(m.group(2)),
                         "seen_after_seconds": time.time() - started}
                break
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    if found is None:
        raise RuntimeError(f"`{' '.join(cmd)}` ended without its start-up line (exit {proc.returncode})")
    return {"rows": rows, **found}


# ---- end to end with default flags against a bare loop on all cores -----------------------------------------
ALL_CORES = "end to end / bare codec, all cores"
CLIP_CYCLE = (1.0, 2.0, 3.0, 4.5, 6.5, 13.0, 30.0)  # clips of 1-30 s, cycled until the total is reached


def make_clip_set(root: Path, *, total_seconds: float, rate: int = 44100) -> tuple[Path, float]:
    """A Clotho-layout set (one split, so the default plan is few shards) of about `total_seconds` of
    44.1 kHz audio in clips of 1-30 s; returns (manifest, seconds)."""
    import csv

    import soundfile as sf

    from sharding.manifest import make_manifest
    from uti.assets import AUDIO_KINDS, synth_audio

    split = root / "clotho" / "development"
    split.mkdir(parents=True, exist_ok=True)
    rows, total, i = [], 0.0, 0
    while total < total_seconds - 0.5:
        seconds = max(1.0, min(CLIP_CYCLE[i % len(CLIP_CYCLE)], total_seconds - total))
        name = f"clip_{i:04d}.wav"
        sf.write(split / name, synth_audio(AUDIO_KINDS[i % 4], seconds=seconds, sample_rate=rate, seed=i), rate)
        rows.append([name] + [f"clip {i} caption {j}" for j in range(5)])
        total += seconds
        i += 1
    with open(root / "clotho" / "clotho_captions_development.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name"] + [f"caption_{j}" for j in range(1, 6)])
        writer.writerows(rows)
    manifest = root / "audio.jsonl"
    make_manifest("clotho", root / "clotho", manifest)
    return manifest, total


def bare_loop_all_cores(manifest: Path, *, modality: str = "audio") -> dict[str, Any]:
    """The codec alone: pre-loaded (and resampled/resized) inputs, batch 1, torch threads = every core."""
    import torch

    from sharding.media import AudioSpec, load_audio, load_image
    from uti.config import LimitsConfig, load_config
    from uti.tokenizer import UnifiedTokenizer

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    tok = UnifiedTokenizer(load_config("default"), modalities=(modality,), device="cpu")
    rows = _rows(manifest)
    if modality == "audio":
        spec = AudioSpec(sample_rate=tok.audio.sample_rate, channels=tok.audio.channels)
        data = [load_audio(r, spec=spec, limits=LimitsConfig()).data for r in rows]
        units = sum(d.shape[-1] for d in data) / tok.audio.sample_rate
        encode = tok.encode_audios
    else:
        data = [load_image(r, proc_size=tok.image.proc_size[0], limits=LimitsConfig()).data for r in rows]
        units = float(len(data))
        encode = tok.encode_images
    start = time.perf_counter()
    for item in data:
        encode([item])
    elapsed = time.perf_counter() - start
    return {"units": units, "seconds": elapsed, "rate": units / elapsed, "threads": threads, "batch_size": 1}


def _split_by_duration(rows: list, parts: int) -> list[list]:
    """Rows dealt longest first to the lightest part, so parallel loops end together."""
    shares: list[list] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for row in sorted(rows, key=lambda r: -(r.duration or 0.0)):
        i = load.index(min(load))
        shares[i].append(row)
        load[i] += row.duration or 0.0
    return shares


_BARRIER = None


def _barrier_init(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


def _single_thread_loop(rows: list) -> tuple[float, float, float]:
    """One process, one torch thread, one EnCodec: load, pre-resample, wait for the others, then encode.
    Returns (units, loop start, loop end) on the wall clock, so parallel loops can be combined."""
    import torch

    from sharding.media import AudioSpec, load_audio
    from uti.config import LimitsConfig, load_config
    from uti.tokenizer import UnifiedTokenizer

    torch.set_num_threads(1)
    tok = UnifiedTokenizer(load_config("default"), modalities=("audio",), device="cpu")
    spec = AudioSpec(sample_rate=tok.audio.sample_rate, channels=tok.audio.channels)
    data = [load_audio(r, spec=spec, limits=LimitsConfig()).data for r in rows]
    if _BARRIER is not None:
        _BARRIER.wait()
    start = time.time()
    for item in data:
        tok.encode_audios([item])
    return sum(d.shape[-1] for d in data) / tok.audio.sample_rate, start, time.time()


def bare_parallel_loops(manifest: Path, *, processes: int) -> dict[str, Any]:
    """`processes` bare single-thread loops side by side over the clips split between them: what this
    machine itself gains from a second core, the ceiling of any 1 -> 2 actor scaling measured on it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = _split_by_duration(_rows(manifest), processes)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_barrier_init,
                             initargs=(ctx.Barrier(processes),)) as pool:
        runs = list(pool.map(_single_thread_loop, shares))
    units = sum(r[0] for r in runs)
    seconds = max(r[2] for r in runs) - min(r[1] for r in runs)
    return {"units": units, "seconds": seconds, "rate": units / seconds, "processes": processes, "threads_each": 1}


def hardware_scaling(manifest: Path) -> dict[str, Any]:
    """Bare single-thread loops, 1 process vs 2 side by side: the machine's own 1 -> 2 core efficiency."""
    one, two = bare_parallel_loops(manifest, processes=1), bare_parallel_loops(manifest, processes=2)
    return {"one": one, "two": two, "efficiency": two["rate"] / one["rate"] / 2}


def uti_tokenize_command(manifest: Path, out: Path, *flags: str) -> dict[str, Any]:
    """`uti tokenize` as a user runs it (its own local Ray, default flags unless given): wall clock from
    the command starting to its exit, start-up included."""
    import subprocess
    import sys

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "uti.cli", "tokenize", "--manifest", str(manifest), "--out", str(out),
           "--no-progress", *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    job = json.loads((out / "job.json").read_text())
    t = job["throughput"]
    units = t["audio_seconds"] if t["audio_seconds"] else float(t["images"])
    return {"units": units, "seconds": wall, "rate": units / wall, "flags": list(flags),
            "actors": job["actors"]["count"], "shards": job["counts"]["shards"]["total"],
            "chunks": job["counts"].get("chunks_encoded"), "startup_seconds": t.get("startup_seconds"),
            "processing_seconds": t["processing_seconds"], "busy_fraction": job["actors"]["busy_fraction"]}


def all_cores(work: Path, *, seconds: float = 600.0, scaling: bool = True) -> dict[str, Any]:
    """`uti tokenize` with default flags vs the bare loop on every core, on `seconds` of audio; with
    `scaling`, also --num-actors 1 and 2 (end to end, same clips)."""
    manifest, total = make_clip_set(work / f"clips_{int(seconds)}", total_seconds=seconds)
    out: dict[str, Any] = {"audio_seconds": total, "bare": bare_loop_all_cores(manifest)}
    out["uti_default"] = uti_tokenize_command(manifest, work / "default")
    out["ratio"] = out["uti_default"]["rate"] / out["bare"]["rate"]
    if scaling:
        one = out["uti_1_actor"] = uti_tokenize_command(manifest, work / "one", "--num-actors", "1")
        two = out["uti_2_actors"] = uti_tokenize_command(manifest, work / "two", "--num-actors", "2")
        out["scaling_2_over_1"] = two["rate"] / one["rate"]
        out["scaling_efficiency"] = out["scaling_2_over_1"] / 2
        out["scaling_efficiency_processing"] = one["processing_seconds"] / two["processing_seconds"] / 2
        out["hardware_scaling"] = hardware_scaling(manifest)
    return out


def images_all_cores(work: Path, *, count: int) -> dict[str, Any]:
    """Images end to end (default flags) vs the bare image-codec loop on every core."""
    from bench.data import make_image_set

    manifest = make_image_set(work / f"images_{count}", count=count)
    bare = bare_loop_all_cores(manifest, modality="image")
    uti = uti_tokenize_command(manifest, work / "images_default")
    return {"bare": bare, "uti_default": uti, "ratio": uti["rate"] / bare["rate"]}


def all_cores_ratios(r: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, label in (("all_cores_600s", ""), ("all_cores_1h", ", 1 h")):
        if key in r:
            out[f"{ALL_CORES}{label}"] = r[key]["ratio"]
            if "scaling_efficiency" in r[key]:
                out[f"scaling efficiency 1 -> 2 actors, end to end{label}"] = r[key]["scaling_efficiency"]
            if "scaling_efficiency_processing" in r[key]:
                out[f"scaling efficiency 1 -> 2 actors, processing{label}"] = r[key]["scaling_efficiency_processing"]
            if "hardware_scaling" in r[key]:
                hw = r[key]["hardware_scaling"]
                out[f"scaling efficiency 1 -> 2 bare single-thread loops (this machine's ceiling){label}"] = \
                    hw["efficiency"]
                # Stricter than the all-cores bare loop (one process, a torch thread per core): one
                # single-thread loop per core side by side, the fastest bare way to run this codec here.
                out[f"end to end / bare single-thread loops, one per core{label}"] = \
                    r[key]["uti_default"]["rate"] / hw["two"]["rate"]
    if "images_all_cores" in r:
        out["images end to end / bare image codec, all cores"] = r["images_all_cores"]["ratio"]
    for s in r.get("startup", []):
        out[f"start-up seconds at {s['rows'] // 1000}k rows"] = s["startup_seconds"]
        out[f"driver peak RSS MB at {s['rows'] // 1000}k rows"] = s["driver_peak_rss_mb"]
    return out


if __name__ == "__main__":
    import argparse
    import platform

    parser = argparse.ArgumentParser(
        description="uti tokenize end to end with default flags vs a bare codec loop on every core, scaling "
                    "1 -> 2 actors, start-up time and driver RSS at scale; merged into bench/results.json")
    parser.add_argument("--seconds", type=float, default=600.0, help="seconds of audio of the main ratio (0: skip)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the --num-actors 1 and 2 runs")
    parser.add_argument("--hour", action="store_true", help="also the ratio at about 1 h of audio (slow)")
    parser.add_argument("--images", type=int, default=0, help="also images end to end vs bare, on N images")
    parser.add_argument("--startup-rows", type=int, nargs="*", default=[100_000],
                        help="manifest sizes for start-up time and driver RSS (600000 is the issue's target size)")
    parser.add_argument("--with-600k", action="store_true", help="add 600000 to --startup-rows")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results.json",
                        help="results file to merge into ('-': print only)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="uti-bench-all-cores-"))
    measured: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                            "load_average_at_start": list(os.getloadavg())}}
    if args.seconds > 0:
        measured["all_cores_600s"] = all_cores(base / "a600", seconds=args.seconds, scaling=not args.no_scaling)
    if args.hour:
        measured["all_cores_1h"] = all_cores(base / "a3600", seconds=3600.0, scaling=False)
    if args.images:
        measured["images_all_cores"] = images_all_cores(base / "img", count=args.images)
    rows = sorted(set(args.startup_rows) | ({600_000} if args.with_600k else set()))
    measured["startup"] = [startup_at_scale(n, base / f"s{n}") for n in rows]
    measured["machine"]["load_average_at_end"] = list(os.getloadavg())
    ratio_table = all_cores_ratios(measured)
    print(json.dumps({"ratios": ratio_table, "results": measured}, indent=2))
    if str(args.results) != "-":
        from bench.results import merge

        # Parts not measured this time (e.g. the 1 h run without --hour) keep their last results, marked.
        earlier = json.loads(args.results.read_text()).get("results", {}).get("tokenize_all_cores", {}) \
            if args.results.is_file() else {}
        for key, value in earlier.items():
            if key not in measured and isinstance(value, dict):
                measured[key] = {**value, "from_an_earlier_run": True}
        merge(args.results, sections={"tokenize_all_cores": measured}, ratios=ratio_table)
