"""Run the benchmarks, print a table of throughputs and ratios, write bench/results.json.

    python -m bench.run            # full run (about 5 minutes on 2 cores)
    python -m bench.run --quick    # smoke run on tiny inputs (numbers meaningless)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from bench.results import DEFAULT_PATH, merge, verdict


def _run_benchmarks(args: argparse.Namespace) -> tuple[dict, dict]:
    from bench import bench_tokenize

    results: dict = {}
    ratio_table: dict = {}
    if args.only in (None, "tokenize"):
        results["tokenize"] = bench_tokenize.run(quick=args.quick, workdir=args.workdir, audio_scale=args.audio_scale,
                                                 address=args.address, gpus_per_actor=args.gpus_per_actor)
        ratio_table.update(bench_tokenize.ratios(results["tokenize"]))
    for extra in ("verify", "train"):
        if args.only not in (None, extra):
            continue
        module = __import__(f"bench.bench_{extra}", fromlist=["run", "ratios"])
        results[f"bench_{extra}"] = module.run(quick=args.quick, workdir=args.workdir)
        ratio_table.update(module.ratios(results[f"bench_{extra}"]))
    return results, ratio_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks the scripts run, not speed")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH,
                        help="results file; this run's sections replace their old values, other sections are kept")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--audio-scale", type=float, default=1.0,
                        help="multiply every clip's length (1.0: about 60 s of audio, as the targets specify)")
    parser.add_argument("--address", default=None, help="run the Ray pipelines on this cluster (--workdir must be shared)")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per codec actor (GPU clusters)")
    parser.add_argument("--only", choices=("tokenize", "verify", "train"), default=None, help="run one benchmark")
    args = parser.parse_args(argv)

    started = time.time()
    # The Ray pipelines (bench_tokenize) start and stop a local Ray of their own, or use one this process
    # already runs (a test's session instance); --quick trains in this process (bench_train).
    results, ratio_table = _run_benchmarks(args)
    print(f"{'measurement':<48} {'rate':>12}  unit")
    for name, r in results.get("tokenize", {}).items():
        unit = "images/s" if name.startswith("image") else "audio s/s"
        steady = f" (steady {r['steady_rate']:.1f})" if "steady_rate" in r else ""
        print(f"{name:<48} {r['rate']:>12.2f}  {unit}{steady}")
    print()
    print(f"{'ratio':<48} {'value':>12}  target")
    for name, value in ratio_table.items():
        print(f"{name:<48} {value:>12.2f}  {verdict(name, value)}")
    merge(args.out, sections=results, ratios=ratio_table, top={
        "quick": args.quick, "audio_scale": args.audio_scale, "seconds": time.time() - started,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()}})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
