"""bench/results.json: the one writer. Every benchmark script merges its own section into the file and keeps
everyone else's, so `python -m bench.run` (tokenize, verify, train) never drops the sections and ratios
written by `bench_tokenize` (all cores, start-up), `bench_codecs` or `bench_storage`, and the reverse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).resolve().parent / "results.json"

# Ratios that must reach at least this (higher is better).
AT_LEAST = {
    "b/a (steady state vs codec limit)": 0.85,
    "b/c (end to end vs HF datasets.map)": 1.5,
    "b/d (end to end vs Ray Data, 1 actor each)": 1.0,
    "verify MB/s per core (structural checks)": 200.0,
    "train input tokens/s / model tokens/s": 10.0,
    "end to end / bare codec, all cores": 0.85,
    "end to end / bare codec, all cores, 1 h": 0.95,
    "scaling efficiency 1 -> 2 actors, end to end": 0.9,
}
# Measurements that must stay under this (lower is better): seconds and megabytes, not ratios.
AT_MOST = {
    "start-up seconds at 100k rows": 15.0,
    "start-up seconds at 600k rows": 15.0,
    "driver peak RSS MB at 100k rows": 1024.0,
    "driver peak RSS MB at 600k rows": 1024.0,
}


def verdict(name: str, value: float) -> str:
    """'>= 0.85  met', '<= 15  MISSED', or '' for a measurement without a target."""
    if name in AT_LEAST:
        return f">= {AT_LEAST[name]}  {'met' if value >= AT_LEAST[name] else 'MISSED'}"
    if name in AT_MOST:
        return f"<= {AT_MOST[name]:g}  {'met' if value <= AT_MOST[name] else 'MISSED'}"
    return ""


def merge(path: Path | str, *, sections: dict[str, Any], ratios: dict[str, float] | None = None,
          top: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `sections` under "results" and `ratios` into "ratios" of the file at `path`, keeping every other
    section and ratio already there; `top` sets top-level keys (e.g. "codecs"). Returns what was written."""
    path = Path(path)
    payload: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    payload.setdefault("results", {}).update(sections)
    payload.setdefault("ratios", {}).update(ratios or {})
    payload.update(top or {})
    payload["targets"] = {"at_least": AT_LEAST, "at_most": AT_MOST}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return payload
