"""Generate tests/reliability/REPORT.md from the reliability suite's results.

    python -m tests.reliability.report          # run the suite (pytest -m reliability), then write REPORT.md
    python -m tests.reliability.report --no-run # only render the last results.json

The suite's conftest writes tests/reliability/results.json at the end of every pytest session that ran
reliability tests (rows of a partial run are merged into the file); this command renders it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = HERE / "results.json"
REPORT = HERE / "REPORT.md"
GROUP_TITLES = {
    "tokenize faults": "1. Faults during `uti tokenize` (local Ray, CPU)",
    "train faults": "1b. Faults during `uti train` (Ray Train, CPU)",
    "hostile inputs": "2. Hostile inputs to manifest building and tokenization",
    "hostile manifests": "2b. Hostile dataset layouts and manifests",
    "hostile shards": "3. Hostile shards to the reader, `uti verify` and `uti train`",
    "fuzzing": "4. Fuzzing (hypothesis, 200 examples each, derandomized)",
    "security": "5. Security defaults",
}

NOTES = """\
## How to read this

* **runs**: how many job runs (or fuzzed inputs) the scenario took; a fault followed by a rerun is 2.
* **samples lost / duplicates**: manifest rows that are in neither a shard nor `errors.jsonl`, and rows
  found twice across both, counted by reading every shard back (`ShardReader`) and `errors.jsonl`.
  `n/a` where the scenario has no dataset rows (a refused shard, a fuzzed buffer, a socket check).
* After every tokenize fault the output is compared with a clean run's: every shard tar and index,
  `errors.jsonl`, `plan.json` and the token space must be byte-identical, no orphan or temp file may
  remain, and `uti verify` must pass (the clean run itself passes the full verify, with every sample
  decoded and re-encoded).
* **KNOWN BUG (XFAIL)** rows are real defects found by this suite in files outside its remit; each test
  is `xfail(strict=True)`, so it turns into a failure the day the bug is fixed, to be un-marked.

## Covered elsewhere, not repeated here

* A worker node removed from a two-node `ray.cluster_utils.Cluster` mid-job:
  `tests/test_tokenize_cluster.py::test_removing_a_worker_node_mid_job_loses_no_shard` (same
  byte-identical and exactly-once checks).
* Exact resume of training (batch checksums and losses step by step, uninterrupted vs resumed):
  `tests/test_train.py::test_resume_continues_loss_and_data_position`.

## Not feasible in this CI, and what stands in

* **Read-only output folder**: the suite runs as root, for whom `chmod 0555` changes nothing. A full
  disk is simulated instead with a real 64 KiB tmpfs mounted on OUT (skipped where `mount` is not
  allowed), and grown with `mount -o remount` before the rerun.
* **An `OSError` injected into the shard writer**: the writer runs inside Ray actor processes, which a
  test cannot monkeypatch without test hooks in library code (not allowed); the tmpfs gives a real one.
* **GPU actors, object stores (`s3://`), multi-host Ray Train**: no GPU, no network here; the code paths
  are the same as on CPU/local disk except for the device and the fsspec backend.
* **Killing a Ray Train worker through the State API**: a local instance runs without the dashboard,
  which the State API needs; the worker is found as a `ray::RayTrainWorker` child process of the
  suite's own Ray and SIGKILLed by pid.
"""


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(data: dict) -> str:
    rows = data["rows"]
    env = data.get("environment", {})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [
        "# Reliability and security report",
        "",
        f"Generated {data.get('generated', '?')} by `python -m tests.reliability.report` from "
        "`tests/reliability/results.json` (written by `pytest -m reliability`).",
        "",
        f"Environment: Python {env.get('python')}, Ray {env.get('ray')}, torch {env.get('torch')}, "
        f"{env.get('cpus')} CPUs, {env.get('platform')}. Last session: {data.get('tests_run_this_session')} "
        f"reliability tests in {data.get('session_seconds')} s wall (pytest exit status {data.get('exitstatus')}).",
        "",
        "Scenarios: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".",
        "",
    ]
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    for group, title in GROUP_TITLES.items():
        if group not in by_group:
            continue
        lines += [f"## {title}", "", "| fault or input | runs | outcome | samples lost | duplicates |",
                  "| --- | --- | --- | --- | --- |"]
        for r in by_group[group]:
            outcome = r["outcome"] or r["status"]
            if r["status"] == "passed":
                outcome = f"PASS: {outcome}"
            lines.append(f"| {_cell(r['scenario'])} | {_cell(r['runs'])} | {_cell(outcome)} | {_cell(r['lost'])} | "
                         f"{_cell(r['duplicates'])} |")
        lines.append("")
    lines.append(NOTES)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="render the existing results.json, do not run pytest")
    parser.add_argument("--out", default=str(REPORT), help="where to write the report (default: %(default)s)")
    args = parser.parse_args(argv)
    code = 0
    if not args.no_run:
        t0 = time.time()
        code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "reliability",
                               str(HERE)], cwd=REPO).returncode
        print(f"reliability suite: exit {code} in {time.time() - t0:.0f} s")
    if not RESULTS.is_file():
        print(f"no {RESULTS}: run the suite first (without --no-run)", file=sys.stderr)
        return 2
    Path(args.out).write_text(render(json.loads(RESULTS.read_text())))
    print(f"wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
