"""Codec throughput: for each codec family, its real architecture with random weights
(never `arch: small`), the bare model's encode rate and `uti tokenize`'s end-to-end rate on the same
clips (images) in the same run, on this machine.

(a) bare: the adapter's `encode` on pre-loaded, pre-resampled inputs, one item per call (every adapter
    encodes one item per forward pass; see uti.codecs.hf_common), one torch thread (what one codec
    actor gets). Model load and reading the files are outside the timing.
(b) `uti tokenize` end to end on the same files: one codec actor with one CPU, Ray already up. Reported
    whole (the command's wall time, including actor start and codec load, which a short run is
    dominated by) and steady (from the first loaded actor to the last committed shard: what a long
    job sees). The ratio b_steady / a is the pipeline's overhead over the model on these inputs.
Also: tokens per second of audio (what one second of sound costs an LM's context) and codec load time.

    python -m bench.bench_codecs                     # every codec, a few short inputs (several minutes)
    python -m bench.bench_codecs --only mimi,snac    # some of them
    python -m bench.bench_codecs --quick             # tiny inputs: checks the script runs

Results merge into bench/results.json under "codecs" (other benchmarks' entries are kept).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any



@dataclass(frozen=True)
class CodecCase:
    name: str
    modality: str  # "audio" or "image"
    config: str  # the uti.yaml codec section (random weights, real architecture)
    items: int  # clips or images in the default run: few, these models are slow on CPU
    note: str = ""


CASES = (
    CodecCase("encodec_24khz", "audio", "audio: {kind: encodec, model: encodec_24khz, bandwidth: 6.0, weights: 'random:0'}", 3, "the default codec, for reference"),
    CodecCase("mimi", "audio", "audio: {kind: mimi, n_q: 8, weights: 'random:0'}", 3),
    CodecCase("dac_44khz", "audio", "audio: {kind: dac, model: 44khz, weights: 'random:0'}", 3),
    CodecCase("snac_24khz", "audio", "audio: {kind: snac, model: 24khz, weights: 'random:0'}", 3),
    CodecCase("xcodec2", "audio", "audio: {kind: xcodec2, weights: 'random:0'}", 2, "about 0.3x real time on CPU"),
    CodecCase("wavtokenizer_40", "audio", "audio: {kind: wavtokenizer, model: 40token, weights: 'random:0'}", 3),
    CodecCase("wavtokenizer_75", "audio", "audio: {kind: wavtokenizer, model: 75token, weights: 'random:0'}", 3),
    CodecCase("neucodec", "audio", "audio: {kind: neucodec, weights: 'random:0'}", 2,
              "630M parameters (a 0.6B Wav2Vec2-BERT semantic encoder); 16 kHz in, 24 kHz out"),
    CodecCase("xcodec", "audio", "audio: {kind: xcodec, weights: 'random:0'}", 3, "hubert-librispeech, 8 levels (4 kbps)"),
    CodecCase("higgs_audio_v2", "audio", "audio: {kind: higgs_audio_v2, weights: 'random:0'}", 3, "8 levels (2 kbps)"),
    CodecCase("janus", "image", "image: {kind: janus, weights: 'random:0'}", 2),
    CodecCase("chameleon", "image", "image: {kind: chameleon, weights: 'random:0'}", 1, "512 px; about 12 s per image on CPU"),
    CodecCase("emu3", "image", "image: {kind: emu3, weights: 'random:0'}", 1, "about 45 s per 512 px image on CPU"),
)
CLIP_SECONDS = (2.0, 3.0, 4.0)  # the first `items` of these (44.1 kHz WAVs: every codec resamples)


def make_inputs(root: Path, case: CodecCase, *, quick: bool) -> Path:
    """WAVs or PNGs and their manifest (one split, 'train')."""
    from PIL import Image

    import soundfile as sf

    from sharding.manifest import ManifestRow, write_manifest
    from uti.assets import AUDIO_KINDS, synth_audio, synth_image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 1 if quick else case.items
    for i in range(n):
        if case.modality == "audio":
            seconds = 0.5 if quick else CLIP_SECONDS[i % len(CLIP_SECONDS)]
            path = root / f"clip{i}.wav"
            sf.write(path, synth_audio(AUDIO_KINDS[i % 4], seconds=seconds, sample_rate=44100, seed=i), 44100)
            rows.append(ManifestRow(id=f"bench:{case.name}/{i}", dataset="bench", modality="audio", path=str(path),
                                    captions=(f"clip {i}",), split="train", duration=seconds))
        else:
            path = root / f"img{i}.png"
            Image.fromarray(synth_image(size=160 if quick else 640, seed=i)).save(path)
            rows.append(ManifestRow(id=f"bench:{case.name}/{i}", dataset="bench", modality="image", path=str(path),
                                    captions=(f"image {i}",), split="train"))
    manifest = root / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest


def bare_encode(case: CodecCase, config_path: Path, manifest: Path) -> dict[str, Any]:
    """(a): load the codec once, read every input outside the timing, then time encode alone."""
    import torch

    from sharding.manifest import read_manifest
    from sharding.media import AudioSpec, load_audio, load_image
    from uti.config import LimitsConfig, load_config
    from uti.tokenizer import UnifiedTokenizer

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tok = UnifiedTokenizer(load_config(str(config_path)), modalities=(case.modality,))
    load = time.perf_counter() - t0
    rows = read_manifest(manifest)
    if case.modality == "audio":
        spec = AudioSpec(sample_rate=tok.audio.sample_rate, channels=tok.audio.channels)
        data = [load_audio(r, spec=spec, limits=LimitsConfig()).data for r in rows]
        units = sum(d.shape[-1] for d in data) / tok.audio.sample_rate
        tok.encode_audios([data[0][:, : tok.audio.hop_length * 4]])  # warm-up on a few frames, not timed
        encode = tok.encode_audios
    else:
        data = [load_image(r, proc_size=tok.image.proc_size[0], limits=LimitsConfig()).data for r in rows]
        units = float(len(data))
        encode = tok.encode_images  # no warm-up: one more image would double the slow models' run
    tokens = 0
    start = time.perf_counter()
    for item in data:
        ids, _ = encode([item])[0]
        tokens += int(ids.size)
    seconds = time.perf_counter() - start
    layout = tok.space.layout(case.modality)
    out = {"units": units, "seconds": seconds, "rate": units / seconds, "load_seconds": load, "tokens": tokens,
           "layout": layout.kind, "tokens_per_frame": layout.tokens_per_frame,
           "weights_fingerprint": tok.space.codecs[case.modality].fingerprint[:16]}
    if case.modality == "audio":
        out["tokens_per_audio_second"] = tokens / units
        out["sample_rate"] = tok.audio.sample_rate
    del tok, encode
    gc.collect()
    return out


def uti_tokenize(case: CodecCase, config_path: Path, manifest: Path, out: Path) -> dict[str, Any]:
    """(b): the real job, one actor with one CPU; Ray is up already, so its start is not timed."""
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    job = run_tokenize(TokenizeConfig(manifests=(str(manifest),), out=str(out), config=str(config_path),
                                      num_actors=1, cpus_per_actor=1.0, batch_seconds=10.0, max_images_per_batch=4,
                                      progress=False))
    total = time.perf_counter() - start
    t = job["throughput"]
    units = float(t["audio_seconds"]) if case.modality == "audio" else float(job["counts"]["samples"])
    steady = float(t["processing_seconds"])
    return {"units": units, "seconds": total, "rate": units / total, "steady_seconds": steady,
            "steady_rate": units / steady if steady else None, "samples": job["counts"]["samples"],
            "errors": job["counts"].get("errors", 0)}


def run_case(case: CodecCase, work: Path, *, quick: bool) -> dict[str, Any]:
    root = work / case.name
    manifest = make_inputs(root / "src", case, quick=quick)
    config_path = root / "uti.yaml"
    config_path.write_text(f"text: {{kind: byte}}\n{case.config}\n")
    result: dict[str, Any] = {"modality": case.modality, "config": case.config, "note": case.note}
    # The 1-minute load average around each half: a shared machine's other jobs skew (a) and (b) differently
    # (the bare loop is one busy process, the job several), so a ratio measured under load says so.
    result["loadavg_before_a"] = os.getloadavg()[0]
    result["a_bare"] = bare_encode(case, config_path, manifest)
    result["loadavg_before_b"] = os.getloadavg()[0]
    result["b_uti"] = uti_tokenize(case, config_path, manifest, root / "out")
    result["loadavg_after_b"] = os.getloadavg()[0]
    bare, uti = result["a_bare"], result["b_uti"]
    if uti["steady_rate"]:
        result["b_steady/a"] = uti["steady_rate"] / bare["rate"]
    result["b_whole/a"] = uti["rate"] / bare["rate"]
    return result


def run(*, quick: bool = False, only: list[str] | None = None, workdir: Path | None = None) -> dict[str, Any]:
    from uti.ray_local import connect

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(workdir or tempfile.mkdtemp(prefix="uti-bench-codecs-"))
    cases = [c for c in CASES if only is None or c.name in only]
    results: dict[str, Any] = {}
    connect(None, num_cpus=2)
    try:
        for case in cases:
            started = time.perf_counter()
            try:
                results[case.name] = run_case(case, work, quick=quick)
            except Exception as exc:  # noqa: BLE001 - one codec failing must not lose the others' numbers
                results[case.name] = {"modality": case.modality, "error": f"{type(exc).__name__}: {exc}"}
            results[case.name]["bench_seconds"] = time.perf_counter() - started
            print(_line(case.name, results[case.name]), flush=True)
    finally:
        ray.shutdown()
    return results


def _line(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{name:<14} failed: {r['error']}"
    a, b = r["a_bare"], r["b_uti"]
    unit = "audio s/s" if r["modality"] == "audio" else "images/s"
    per_s = f"{a['tokens_per_audio_second']:7.1f} tok/s-audio" if "tokens_per_audio_second" in a else " " * 21
    steady = f"{b['steady_rate']:.3f}" if b["steady_rate"] else "-"
    return (f"{name:<14} bare {a['rate']:8.3f}  uti steady {steady:>8}  uti whole {b['rate']:8.3f} {unit:<9}  "
            f"{per_s}  codec load {a['load_seconds']:5.1f} s  loadavg {r.get('loadavg_before_a', 0):.0f}")


def table(results: dict[str, Any]) -> str:
    """The README table (markdown)."""
    lines = ["| codec (random weights, real architecture) | layout | tokens / s of audio | bare encode | "
             "`uti tokenize` steady | steady / bare | `uti tokenize` whole run | codec load |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | | | failed: {r['error'][:80]} | | | | |")
            continue
        a, b = r["a_bare"], r["b_uti"]
        unit = "audio s/s" if r["modality"] == "audio" else "images/s"
        tps = f"{a['tokens_per_audio_second']:.0f}" if "tokens_per_audio_second" in a else "-"
        steady = f"{b['steady_rate']:.3g} {unit}" if b["steady_rate"] else "-"
        ratio = f"{r['b_steady/a']:.2f}" if "b_steady/a" in r else "-"
        layout = f"{a['layout']} ({a['tokens_per_frame']}/frame)" if r["modality"] == "audio" else a["layout"]
        lines.append(f"| {name} | {layout} | {tps} | {a['rate']:.3g} {unit} | {steady} | {ratio} | "
                     f"{b['rate']:.3g} {unit} ({b['seconds']:.0f} s for {b['units']:.3g}) | {a['load_seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_codecs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one tiny input per codec: checks the script runs")
    parser.add_argument("--only", default=None, help=f"comma-separated codecs of: {', '.join(c.name for c in CASES)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.json")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or ()) - {c.name for c in CASES})
    if unknown:
        parser.error(f"--only: unknown codec(s) {unknown}; choose from {[c.name for c in CASES]}")
    started = time.time()
    results = run(quick=args.quick, only=only, workdir=args.workdir)
    print()
    print(table(results))
    from bench.results import merge

    merge(args.out, sections={}, top={"codecs": {
        "quick": args.quick, "seconds": time.time() - started, "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()}}})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
