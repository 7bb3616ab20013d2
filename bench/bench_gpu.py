"""The GPU benchmark: does `uti tokenize` keep a GPU busy?

In one run, on the first CUDA device:
(a) bare: each codec family's adapter on pre-loaded, pre-resampled inputs already on the device, at
    encode_batch 1, 8 and 32 (one `encode` call over the whole set; the adapter cuts it into fixed-shape
    passes). Real architectures with fixed-seed random weights: the speed of a model does not depend on
    its weights. Model load and the first (warm-up) call are outside the timing.
(b) `uti tokenize` end to end, default flags (on a one-GPU machine: one GPU actor, the GPU default
    encode batch, media prepared on the device), on about an hour of 44.1 kHz audio in 1-30 s clips
    and on about 5k images; its actors' busy fraction (forward-pass time over wall time) and the read
    side's feed rate against the encode rate, from job.json.
Ratios, stored under "gpu" in bench/results.json: end to end (steady: from the first loaded actor to the
last committed shard) / the best bare batched loop of the same codec, and batched / single per family.
Targets on a GPU: end to end >= 0.9 of the best bare batched loop, actors busy >= 0.95.

    python -m bench.bench_gpu            # on a CUDA machine: the full run (under 8 minutes on one H100)
    python -m bench.bench_gpu --smoke    # tiny inputs and small models (what the test suite runs on a CPU)

Without CUDA it runs the smoke version and says so: its numbers describe nothing but that the script works.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GPU_SECTION = "gpu"
BATCHES = (1, 8, 32)
SMOKE_BATCHES = (1, 2)
E2E_TARGET = 0.9  # end to end (steady) / best bare batched loop
BUSY_TARGET = 0.95  # codec actors' forward-pass time over wall time


@dataclass(frozen=True)
class Family:
    name: str
    modality: str
    section: str  # the codec's uti.yaml section: the real architecture, random weights
    smoke_section: str  # the small config the CPU smoke run uses


FAMILIES = (
    Family("encodec_24khz", "audio", "{kind: encodec, model: encodec_24khz, bandwidth: 6.0, weights: 'random:0'}",
           "{kind: encodec, model: encodec_24khz, bandwidth: 6.0, weights: 'random:0'}"),
    Family("encodec_48khz", "audio", "{kind: encodec, model: encodec_48khz, bandwidth: 6.0, weights: 'random:0'}", ""),
    Family("mimi", "audio", "{kind: mimi, n_q: 8, weights: 'random:0'}", "{kind: mimi, weights: 'random:0', arch: small}"),
    Family("dac_44khz", "audio", "{kind: dac, model: 44khz, weights: 'random:0'}", ""),
    Family("snac_24khz", "audio", "{kind: snac, model: 24khz, weights: 'random:0'}", ""),
    Family("xcodec2", "audio", "{kind: xcodec2, weights: 'random:0'}", ""),
    Family("vqgan", "image", "{kind: vqgan, weights: 'random:0'}", "{kind: vqgan, weights: 'random:0'}"),
    Family("janus", "image", "{kind: janus, weights: 'random:0'}", ""),
    Family("emu3", "image", "{kind: emu3, weights: 'random:0'}", ""),
    Family("seed", "image", "{kind: seed, weights: 'random:0'}", ""),
)
DEFAULT_AUDIO, DEFAULT_IMAGE = "encodec_24khz", "vqgan"  # the `default` preset's codecs: what (b) runs
CLIP_CYCLE = (1.0, 2.0, 3.0, 4.5, 6.5, 13.0, 30.0)  # 60 s per cycle, clips of 1-30 s


@dataclass(frozen=True)
class Sizes:
    bare_audio_seconds: float  # per family, in clips of CLIP_CYCLE
    bare_images: int
    e2e_audio_seconds: float
    e2e_images: int
    batches: tuple[int, ...]


FULL = Sizes(bare_audio_seconds=240.0, bare_images=256, e2e_audio_seconds=3600.0, e2e_images=5000, batches=BATCHES)
SMOKE = Sizes(bare_audio_seconds=8.0, bare_images=4, e2e_audio_seconds=12.0, e2e_images=8, batches=SMOKE_BATCHES)


@dataclass
class BareResult:
    family: str
    modality: str
    batch: int
    units: float  # audio seconds or images
    seconds: float
    forward_seconds: float  # inside the adapter's passes (the rest: padding, copies, code trimming)
    passes: int
    dummies: int

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0


@dataclass
class GpuReport:
    device: str
    smoke: bool
    bare: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # family -> why it did not run
    end_to_end: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# ---- (a) the bare adapter loop ----------------------------------------------------------------------------
def _clip_lengths(total: float) -> list[float]:
    out, i = [], 0
    while sum(out) < total - 0.25:
        out.append(min(CLIP_CYCLE[i % len(CLIP_CYCLE)], max(0.5, total - sum(out))))
        i += 1
    return out


def _codec(family: Family, *, device: str, smoke: bool):
    from uti.codecs.registry import build_audio_codec, build_image_codec
    from uti.config import config_from_yaml

    section = family.smoke_section if smoke else family.section
    cfg = config_from_yaml(f"text: {{kind: byte}}\n{family.modality}: {section}\n", where=f"bench_gpu {family.name}")
    build = build_audio_codec if family.modality == "audio" else build_image_codec
    return build(getattr(cfg, family.modality), device=device)


def _inputs(codec, family: Family, sizes: Sizes, device: str) -> tuple[list, float]:
    """Pre-resampled clips on the device (audio) or proc_size images (the adapters take uint8 arrays)."""
    import torch

    from uti.assets import AUDIO_KINDS, synth_audio, synth_image

    if family.modality == "audio":
        clips = []
        for i, seconds in enumerate(_clip_lengths(sizes.bare_audio_seconds)):
            wav = synth_audio(AUDIO_KINDS[i % 4], seconds=seconds, sample_rate=codec.sample_rate, seed=i)
            clips.append(torch.from_numpy(wav)[None].repeat(codec.channels, 1).to(device))
        return clips, sum(c.shape[-1] for c in clips) / codec.sample_rate
    size = codec.proc_size[0]
    return [synth_image(size=size, seed=i) for i in range(sizes.bare_images)], float(sizes.bare_images)


def bare_family(family: Family, sizes: Sizes, *, device: str, smoke: bool) -> list[BareResult]:
    """(a) for one family: the same inputs at each encode batch, a warm-up call first."""
    import torch

    codec = _codec(family, device=device, smoke=smoke)
    items, units = _inputs(codec, family, sizes, device)
    out = []
    for batch in sizes.batches:
        codec.set_encode_batch(batch)
        codec.encode(items[: min(len(items), batch)])  # warm-up: kernels chosen, memory pools grown
        codec.pass_log.take()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        codec.encode(items)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        log = codec.pass_log.take()
        out.append(BareResult(family=family.name, modality=family.modality, batch=batch, units=units,
                              seconds=seconds, forward_seconds=log.seconds, passes=log.passes, dummies=log.dummies))
    del codec
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


# ---- (b) uti tokenize end to end ------------------------------------------------------------------------
def _tokenize(manifest: Path, out: Path) -> dict[str, Any]:
    """`uti tokenize` with default flags as a user runs it (its own process and local Ray), or, when this
    process already runs Ray (the test suite's session instance), in this process on that Ray; the
    job.json figures (b) reports."""
    import ray

    from bench.bench_tokenize import uti_tokenize_command

    if ray.is_initialized():
        result = _tokenize_in_process(manifest, out)
    else:
        result = uti_tokenize_command(manifest, out)
    job = json.loads((out / "job.json").read_text())
    actors, t = job["actors"], job["throughput"]
    result["steady_rate"] = result["units"] / t["processing_seconds"] if t["processing_seconds"] else 0.0
    result["forward_busy_fraction"] = actors.get("forward_busy_fraction")
    result["per_actor"] = actors.get("per_actor")
    result["feed"] = job.get("feed") or actors.get("feed")
    result["encode_policy"] = job.get("encode_policy")
    return result


def _tokenize_in_process(manifest: Path, out: Path) -> dict[str, Any]:
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    job = run_tokenize(TokenizeConfig(manifests=(str(manifest),), out=str(out), progress=False))
    wall = time.perf_counter() - start
    t = job["throughput"]
    units = t["audio_seconds"] if t["audio_seconds"] else float(t["images"])
    return {"units": units, "seconds": wall, "rate": units / wall, "flags": [], "actors": job["actors"]["count"],
            "processing_seconds": t["processing_seconds"], "busy_fraction": job["actors"]["busy_fraction"]}


def end_to_end(work: Path, sizes: Sizes) -> dict[str, Any]:
    from bench.bench_tokenize import make_clip_set
    from bench.data import make_image_set

    audio_manifest, seconds = make_clip_set(work / "audio_set", total_seconds=sizes.e2e_audio_seconds)
    image_manifest = make_image_set(work / "image_set", count=sizes.e2e_images)
    return {"audio": {"audio_seconds": seconds, **_tokenize(audio_manifest, work / "audio_out")},
            "image": {"images": sizes.e2e_images, **_tokenize(image_manifest, work / "image_out")}}


# ---- ratios -------------------------------------------------------------------------------------------------
def ratios(bare: list[BareResult], e2e: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    by_family: dict[str, list[BareResult]] = {}
    for r in bare:
        by_family.setdefault(r.family, []).append(r)
    for name, results in by_family.items():
        single = next((r for r in results if r.batch == 1), None)
        best = max(results, key=lambda r: r.rate)
        if single and single.rate:
            out[f"gpu: {name} batched / single (best batch {best.batch})"] = best.rate / single.rate
    for modality, family in (("audio", DEFAULT_AUDIO), ("image", DEFAULT_IMAGE)):
        results, run = by_family.get(family), e2e.get(modality)
        if not results or not run:
            continue
        best = max(r.rate for r in results)
        if best:
            out[f"gpu: {modality} end to end (steady) / best bare batched loop"] = run["steady_rate"] / best
            out[f"gpu: {modality} end to end (wall) / best bare batched loop"] = run["rate"] / best
        if run.get("forward_busy_fraction") is not None:
            out[f"gpu: {modality} codec actors busy"] = run["forward_busy_fraction"]
    return out


def verdicts(table: dict[str, float], *, smoke: bool) -> dict[str, str]:
    """'met' / 'MISSED' for the two targets (nothing in a smoke run: its numbers mean nothing)."""
    out = {}
    for name, value in table.items():
        target = E2E_TARGET if "(steady) / best bare" in name else BUSY_TARGET if name.endswith("actors busy") else None
        if target is not None:
            out[name] = "smoke run" if smoke else f">= {target}  {'met' if value >= target else 'MISSED'}"
    return out


# ---- the run ------------------------------------------------------------------------------------------------
def run(*, smoke: bool, workdir: Path, only: tuple[str, ...] = (), skip_e2e: bool = False) -> GpuReport:
    import torch

    cuda = torch.cuda.is_available()
    smoke = smoke or not cuda
    device = "cuda" if cuda else "cpu"
    sizes = SMOKE if smoke else FULL
    report = GpuReport(device=torch.cuda.get_device_name(0) if cuda else f"cpu ({_cpu_model()})", smoke=smoke)
    started = time.perf_counter()
    bare: list[BareResult] = []
    for family in FAMILIES:
        if only and family.name not in only:
            continue
        if smoke and not family.smoke_section:
            report.skipped[family.name] = "not in the smoke run (no small config that runs in seconds on a CPU)"
            continue
        try:
            results = bare_family(family, sizes, device=device, smoke=smoke)
        except Exception as exc:  # noqa: BLE001 - one family failing (e.g. out of memory at batch 32) is reported
            report.skipped[family.name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            continue
        bare.extend(results)
        for r in results:
            print(f"bare {r.family:<16} batch {r.batch:>3}: {r.rate:10.1f} {'audio s/s' if r.modality == 'audio' else 'images/s'}"
                  f"  ({r.passes} passes, {r.dummies} dummy items, {r.forward_seconds / r.seconds if r.seconds else 0:.0%} in passes)",
                  flush=True)
    report.bare = [{**asdict(r), "rate": r.rate} for r in bare]
    if not skip_e2e:
        report.end_to_end = end_to_end(workdir, sizes)
        for modality, r in report.end_to_end.items():
            print(f"uti tokenize {modality:<6}: {r['steady_rate']:10.1f} steady, {r['rate']:10.1f} wall "
                  f"(busy {r.get('forward_busy_fraction')}, feed {r.get('feed')})", flush=True)
    report.ratios = ratios(bare, report.end_to_end)
    report.seconds = time.perf_counter() - started
    return report


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    from bench.results import DEFAULT_PATH, merge

    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, small models (the suite's CPU run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="results file (its 'gpu' section is replaced)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the inputs and shards go (default: a temp dir)")
    parser.add_argument("--only", default="", help="comma-separated families for (a), e.g. encodec_24khz,mimi")
    parser.add_argument("--skip-e2e", action="store_true", help="(a) only")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="uti-bench-gpu-"))
    try:
        report = run(smoke=args.smoke, workdir=work, only=tuple(x for x in args.only.split(",") if x),
                     skip_e2e=args.skip_e2e)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if report.smoke:
        print("smoke run (no CUDA here, or --smoke): the numbers below only show that the benchmark runs")
    judged = verdicts(report.ratios, smoke=report.smoke)
    print(f"\n{'ratio':<64} {'value':>8}  target")
    for name, value in report.ratios.items():
        print(f"{name:<64} {value:>8.2f}  {judged.get(name, '')}")
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    merge(args.out, sections={}, top={GPU_SECTION: {**asdict(report), "verdicts": judged}})
    print(f"\nwrote {args.out} ({GPU_SECTION!r}, {report.seconds:.0f} s on {report.device})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
