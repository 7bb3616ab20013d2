"""Shared pieces of the reliability suite: the session's one Ray instance, one small
dataset and its clean tokenization (the reference every faulted run must equal byte for byte), the
exactly-once accounting, file-tree snapshots, and the results recorder behind REPORT.md.

Every test records what it measured with the `record` fixture; the outcome (passed / FAILED / known
bug) comes from pytest itself, and at the end of the session the rows are merged into
tests/reliability/results.json, which `python -m tests.reliability.report` turns into REPORT.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The suite's one polling helper; test_faults_train.py imports it from here.
from tokenize_helpers import wait_for  # noqa: F401

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
GROUPS = ("tokenize faults", "train faults", "hostile inputs", "hostile manifests", "hostile shards", "fuzzing",
          "security")

# ---- results ------------------------------------------------------------------------------------------
_RECORDS: dict[str, list[dict]] = {}
_STATUS: dict[str, dict] = {}
_SPAN: list[float] = []  # first start and last stop of any phase of a reliability test


@pytest.fixture
def record(request):
    """record(scenario, group=..., runs=1, outcome="...", lost=0, duplicates=0): one row of REPORT.md.

    lost/duplicates: manifest rows missing from (or twice in) shards + errors.jsonl; None where the
    scenario has no samples (a refused shard, a fuzzed buffer)."""

    def rec(scenario: str, *, group: str, outcome: str, runs: int = 1, lost: int | None = 0,
            duplicates: int | None = 0) -> None:
        assert group in GROUPS, group
        _RECORDS.setdefault(request.node.nodeid, []).append(
            {"scenario": scenario, "group": group, "runs": runs, "outcome": outcome, "lost": lost,
             "duplicates": duplicates, "test": request.node.nodeid})

    return rec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    _SPAN[:] = [min(_SPAN[0], call.start), max(_SPAN[1], call.stop)] if _SPAN else [call.start, call.stop]
    if report.when == "call" or report.outcome != "passed":
        status = report.outcome
        if hasattr(report, "wasxfail"):
            status = "known bug (xfail)" if report.skipped else "failed"
        prev = _STATUS.get(item.nodeid)
        if prev is None or prev["status"] == "passed":
            doc = (item.function.__doc__ or item.name).strip().splitlines()[0] if hasattr(item, "function") else item.name
            reason = str(report.longrepr[-1]) if report.skipped and isinstance(report.longrepr, tuple) else ""
            _STATUS[item.nodeid] = {"status": status, "seconds": round(report.duration, 1), "doc": doc,
                                    "group": _group_of(item), "reason": getattr(report, "wasxfail", "") or reason}


def _group_of(item) -> str:
    return getattr(getattr(item, "module", None), "REPORT_GROUP", "security")


_COLLECTED: set[str] = set()  # every test collected (before -k/-m deselection): what still exists


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    _COLLECTED.update(item.nodeid for item in items)


def _still_exists(nodeid: str) -> bool:
    """A row of an earlier session is kept unless its test is gone from a file collected now (a dropped
    parameter or a renamed test): results.json then never reports a scenario that no longer runs."""
    path = nodeid.split("::", 1)[0]
    return nodeid in _COLLECTED or not any(c.split("::", 1)[0] == path for c in _COLLECTED)


def pytest_sessionfinish(session, exitstatus):
    if not _STATUS:
        return
    rows = []
    for nodeid, st in _STATUS.items():
        recs = _RECORDS.get(nodeid) or [{"scenario": st["doc"], "group": st["group"], "runs": 1, "outcome": "",
                                         "lost": None, "duplicates": None, "test": nodeid}]
        for r in recs:
            outcome = r["outcome"]
            if st["status"] != "passed":
                note = f" ({st['reason']})" if st["reason"] else ""
                outcome = f"{st['status'].upper()}{note}" + (f"; measured: {outcome}" if outcome else "")
            rows.append({**r, "outcome": outcome, "status": st["status"], "seconds": st["seconds"]})
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    ran = set(_STATUS)
    kept = [r for r in old.get("rows", []) if r.get("test") not in ran and _still_exists(r.get("test", ""))]
    merged = kept + rows
    merged.sort(key=lambda r: GROUPS.index(r["group"]) if r["group"] in GROUPS else 99)  # stable: run order
    import ray
    import torch

    data = {
        "format": "uti.reliability_results", "version": 1,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "session_seconds": round(_SPAN[1] - _SPAN[0], 1),  # wall time of the reliability tests alone
        "tests_run_this_session": len(ran), "exitstatus": int(exitstatus),
        "environment": {"python": platform.python_version(), "ray": ray.__version__, "torch": torch.__version__,
                        "cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": merged,
    }
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---- Ray and the reference dataset -----------------------------------------------------------------------
# `ray_session` (the one local Ray of the whole test session, started through uti.ray_local.connect) comes
# from tests/conftest.py.


@dataclass
class FaultData:
    manifest: Path
    row_ids: list[str]
    n_shards: int
    shard_samples: int = 1  # one sample per shard: faults land at many different points


@pytest.fixture(scope="package")
def fault_data(tmp_path_factory) -> FaultData:
    from sharding.manifest import write_manifest
    from verify_helpers import make_sources

    base = tmp_path_factory.mktemp("fault-data")
    # verify_helpers' sources, more of them (10 short clips, 6 images): one sample per shard gives faults
    # many points to land on.
    rows = make_sources(base / "src", n_audio=10, n_image=6, dataset="rel", seconds=(0.2, 0.05))
    manifest = base / "manifest.jsonl"
    write_manifest(manifest, rows)
    return FaultData(manifest=manifest, row_ids=sorted(r.id for r in rows), n_shards=len(rows))


def tokenize_cfg(data: FaultData, out: Path, **kw):
    from ray_jobs.config import TokenizeConfig

    # Two codec actors unless a test says otherwise (the kills land on actor 0 and 1): the CPU default is
    # one actor per CPU, and on the shared 3-CPU Ray a third actor is one more process importing torch and
    # loading codecs on two cores, for 18 one-sample shards.
    kw.setdefault("num_actors", 2)
    return TokenizeConfig(manifests=(str(data.manifest),), out=str(out), shard_samples=data.shard_samples,
                          progress=False, **kw)


@pytest.fixture(scope="package")
def clean_run(_shared_ray, fault_data, tmp_path_factory) -> Path:
    """The reference: an undisturbed run, fully verified (every sample decoded and re-encoded). Package scope
    outlives the module-scoped `ray_session`, so it asks the session's shared Ray itself."""
    from ray_jobs.job import run_tokenize
    from verify import VerifyConfig, run_verify

    _shared_ray.ensure()
    out = tmp_path_factory.mktemp("clean") / "out"
    run_tokenize(tokenize_cfg(fault_data, out))
    result = run_verify(VerifyConfig(out=str(out), decode_fraction=1.0, retokenize_fraction=1.0, plots=False,
                                     report_dir=str(out.parent / "verify")))
    assert result.ok, result.report["failed_hard"]
    acc = account(out, fault_data.row_ids)
    assert (acc.lost, acc.duplicates, acc.samples, acc.errors) == (0, 0, len(fault_data.row_ids) - 1, 1), acc
    return out


# ---- accounting and comparisons --------------------------------------------------------------------------
@dataclass
class Account:
    samples: int
    errors: int
    lost: int
    duplicates: int
    unknown: int  # IDs in the output that are not manifest rows


def account(out: Path, row_ids: list[str]) -> Account:
    """Exactly once, measured: every manifest row once in a shard or once in errors.jsonl."""
    from sharding.reader import ShardReader
    from uti.token_space import TokenSpace

    space = TokenSpace.load(out)
    ids = [s.meta["id"] for s in ShardReader(str(out), expected_token_space=space)]
    errors = [json.loads(line)["id"] for line in (out / "errors.jsonl").read_text().splitlines() if line.strip()]
    seen = ids + errors
    return Account(samples=len(ids), errors=len(errors), lost=len(set(row_ids) - set(seen)),
                   duplicates=len(seen) - len(set(seen)), unknown=len(set(seen) - set(row_ids)))


def assert_same_as_clean(out: Path, clean: Path) -> None:
    from tokenize_helpers import shard_bytes

    assert shard_bytes(out) == shard_bytes(clean), "shards differ from the clean run's"
    assert (out / "errors.jsonl").read_bytes() == (clean / "errors.jsonl").read_bytes()
    for name in ("token_space.json", "token_space.sha256", "plan.json"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def snapshot(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file and folder under root (not following symlinks) with size and mtime; `skip` subtrees out."""
    skip_s = [str(p) for p in skip]
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip_s]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            found[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return found


def index_count(out: Path) -> int:
    shards = out / "shards"
    return len(list(shards.glob("*/shard-*.json"))) if shards.is_dir() else 0
