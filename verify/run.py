"""`uti verify` as a library call: scan every shard in a Ray task, reduce, sample for the codec checks,
smoke-test the loader, gate on a baseline, and write the report.

    result = run_verify(VerifyConfig(out="out/", decode_fraction=0.01))
    result.ok, result.report["checks"], result.json_path
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import uti
from sharding.format import ShardRef, is_local, url_to_fs
from uti.errors import UTIError
from uti.progress import DEFAULT_EVERY, Progress, check_every
from verify.baseline import compare, load_baseline, metrics_from, write_baseline
from verify.checks import scan_shard
from uti.ray_local import connect
from uti.reports import GatedReport
from verify.codec_checks import CodecSummary, Pick, run_codec_checks, unverifiable
from verify.config import VerifyConfig
from verify.dataset import DatasetFiles, job_config_dict, load_dataset
from verify.findings import Check, CheckResult, FindingLog
from verify.loader import loader_smoke
from verify.reduce import Reducer
from verify.report import REPORT_FORMAT, REPORT_VERSION, write_html, write_json

# Scan tasks in flight per cluster CPU: enough to keep every core busy without handing Ray a
# million pending tasks at once on a huge dataset.
IN_FLIGHT_PER_CPU = 4


@dataclass
class VerifyResult(GatedReport):
    report_dir: Path


def run_verify(cfg: VerifyConfig, *, progress_every: float = DEFAULT_EVERY) -> VerifyResult:
    """`progress_every`: seconds between two progress lines when stderr is not a terminal (uti.progress)."""
    t0 = time.perf_counter()
    progress = Progress("verify", unit="shard", done_word="checked", every=check_every(progress_every))
    report_dir = _report_dir(cfg)
    files = load_dataset(cfg.out, token_space=cfg.token_space)
    baseline = load_baseline(cfg.baseline) if cfg.baseline else None  # a bad file fails before any work
    report_dir.mkdir(parents=True, exist_ok=True)  # so does a report folder that cannot be made
    owned = connect(cfg.address, num_cpus=cfg.num_cpus)
    try:
        reducer = _scan_all(files, cfg, progress)
        reduced = _second_phase(files, cfg, reducer, progress)
    finally:
        progress.close()
        if owned:
            import ray

            ray.shutdown()
    checks, stats = reduced
    report = _assemble(files, cfg, checks, stats, seconds=time.perf_counter() - t0)
    metrics = metrics_from(report)
    if baseline is not None:
        gate = compare(baseline, metrics, limits=cfg.baseline_limits, where=str(cfg.baseline),
                       token_space_id=files.expected.id)
    else:
        gate = CheckResult(name=Check.BASELINE, ok=True, hard=True, skipped=True, note="no --baseline given")
    report["checks"].append(gate.to_dict())
    report["baseline_metrics"] = metrics
    _verdict(report)
    json_path = write_json(report, report_dir)
    html_path = write_html(report, report_dir, with_plots=cfg.plots)
    baseline_path = write_baseline(cfg.write_baseline, report) if cfg.write_baseline else None
    return VerifyResult(report=report, report_dir=report_dir, json_path=json_path, html_path=html_path,
                        baseline_path=baseline_path)


def _report_dir(cfg: VerifyConfig) -> Path:
    if cfg.report_dir:
        return Path(cfg.report_dir)
    fs, _ = url_to_fs(cfg.out)
    if not is_local(fs):
        raise UTIError(f"{cfg.out} is not a local folder: give a local --report-dir for the report")
    return Path(cfg.out) / "verify"


# ---- phase 1: one task per shard -----------------------------------------------------------------------
def _scan_all(files: DatasetFiles, cfg: VerifyConfig, progress: Progress) -> Reducer:
    import ray

    reducer = Reducer(files, cfg)
    space_ref = ray.put(files.expected.to_dict())
    remote = ray.remote(num_cpus=1, max_retries=cfg.max_retries)(scan_shard)
    todo = []
    for task in files.shards:
        if task.scannable:
            todo.append(task)
        else:
            reducer.add_unscannable(task)
    window = max(8, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[Any, Any] = {}
    queue = iter(todo)
    progress.start(len(todo))
    checked = 0
    while True:
        for task in queue:
            pending[remote.remote(task, space_ref, max_seq_len=cfg.max_seq_len, max_examples=cfg.max_examples,
                                  max_member_bytes=cfg.max_member_bytes)] = task
            if len(pending) >= window:
                break
        if not pending:
            break
        # Wake at the first shard checked, then take every one ready by then: the count moves shard by shard.
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        if done:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in done:
            task = pending.pop(ref)
            try:
                reducer.add(task, ray.get(ref))
            except ray.exceptions.RayError as exc:
                reducer.add_crash(task, exc)
            checked += 1
            progress.update(checked)
    return reducer


# ---- phase 2: codec checks and loader on clean samples ---------------------------------------------------
def _job_device(job: dict | None) -> str | None:
    """The device the job's codec actors really used (actors.device; the config may say "auto"); None
    when job.json does not say."""
    job = job or {}
    actors = job.get("actors") if isinstance(job.get("actors"), dict) else {}
    produced = actors.get("device") or job.get("device") or (job_config_dict(job) or {}).get("device")
    return produced if isinstance(produced, str) and produced != "auto" else None


def _same_device_class(job: dict | None, device: str) -> bool:
    """For shards whose header records no encode policy (version 1): an exact retokenize comparison only
    when the job ran on the device class the checks run on (unknown: agreement is measured)."""
    produced = _job_device(job)
    return produced is not None and produced.split(":")[0] == device.split(":")[0]


def _pick(reducer: Reducer, cfg: VerifyConfig) -> tuple[list[Pick], int]:
    population = sorted(reducer.clean_samples, key=lambda s: (s.split, s.shard, s.key))
    n = len(population)
    rng = np.random.default_rng(cfg.seed)

    def choose(fraction: float) -> set[int]:
        if fraction <= 0 or n == 0:
            return set()
        k = min(n, max(1, math.ceil(fraction * n)))
        return set(rng.choice(n, size=k, replace=False).tolist())

    dec, ret = choose(cfg.decode_fraction), choose(cfg.retokenize_fraction)
    picks = [Pick(split=s.split, shard=s.shard, key=s.key, id=s.id, modality=s.modality,
                  decode=i in dec, retokenize=i in ret, policy=reducer.policy_of(f"{s.split}/{s.shard}", s.modality))
             for i, s in enumerate(population) if i in dec or i in ret]
    return picks, n


def _second_phase(files: DatasetFiles, cfg: VerifyConfig, reducer: Reducer, progress: Progress):
    import ray

    picks, population = _pick(reducer, cfg)
    exact = _same_device_class(files.job, cfg.device)
    by_label = {t.label: t for t in reducer.clean_shards}
    codec_refs = []
    if picks:
        n_tasks = min(cfg.max_codec_tasks, math.ceil(len(picks) / cfg.codec_batch))
        size = math.ceil(len(picks) / n_tasks)
        gpus = 1 if cfg.device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=cfg.max_retries)(run_codec_checks)
        space_ref = ray.put(files.expected.to_dict())
        for i in range(n_tasks):
            chunk = picks[i * size:(i + 1) * size]
            paths = {p.label: (by_label[p.label].tar_path, by_label[p.label].index) for p in chunk}
            codec_refs.append((chunk, remote.remote(
                chunk, paths, space=space_ref, config=job_config_dict(files.job), device=cfg.device, exact=exact,
                max_examples=cfg.max_examples, max_member_bytes=cfg.max_member_bytes,
                allow_mismatch=cfg.allow_token_space_mismatch, job_device=_job_device(files.job))))
    loader_ref, loader_note = None, ""
    if cfg.loader_batches == 0:
        loader_note = "--loader-batches 0"
    elif not reducer.clean_shards:
        loader_note = "no clean shard to read"
    else:
        refs = [ShardRef(split=t.split, name=t.name, tar_path=t.tar_path, index_path=t.index_path, index=t.index)
                for t in sorted(reducer.clean_shards, key=lambda t: t.label)]
        remote = ray.remote(num_cpus=1, max_retries=cfg.max_retries)(loader_smoke)
        loader_ref = remote.remote(refs, files.expected.id, batches=cfg.loader_batches,
                                   batch_size=cfg.loader_batch_size, pad_id=files.expected.special("<pad>"))
    _wait_for_tasks([ref for _, ref in codec_refs], loader_ref, progress)
    codec: list[CodecSummary] = []
    for chunk, ref in codec_refs:
        try:
            codec.append(ray.get(ref))
        except ray.exceptions.RayError as exc:
            log = unverifiable(chunk, f"codec task failed after retries: {type(exc).__name__}: {exc}",
                               FindingLog(cfg.max_examples))
            codec.append(CodecSummary(findings=log))
    loader = None
    if loader_ref is not None:
        try:
            loader = ray.get(loader_ref)
        except ray.exceptions.RayError as exc:
            loader = {"batches": 0, "failure": {"shard": None, "key": None, "id": None,
                                                "detail": f"loader task failed: {type(exc).__name__}: {exc}"}}
    codec_plan = {"population": population, "decode_picked": sum(p.decode for p in picks),
                  "retokenize_picked": sum(p.retokenize for p in picks), "tasks": len(codec_refs),
                  "exact_retokenize": exact}
    reduced = reducer.finish(codec=codec, codec_plan=codec_plan, loader=loader, loader_note=loader_note)
    return reduced.checks, reduced.stats


def _wait_for_tasks(codec_refs: list, loader_ref, progress: Progress) -> None:
    """Wait for the codec checks and the loader smoke test, saying which of them the run waits for."""
    import ray

    loader = {loader_ref.hex()} if loader_ref is not None else set()
    refs = [*codec_refs, *([loader_ref] if loader_ref is not None else [])]
    while refs:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        codec_left = sum(r.hex() not in loader for r in refs)
        what = [f"codec checks ({len(codec_refs) - codec_left}/{len(codec_refs)} tasks done)"] if codec_left else []
        if any(r.hex() in loader for r in refs):
            what.append("the loader smoke test")
        progress.note(" and ".join(what))


# ---- report -----------------------------------------------------------------------------------------------
def _assemble(files: DatasetFiles, cfg: VerifyConfig, checks: list[CheckResult], stats: dict[str, Any], *,
              seconds: float) -> dict[str, Any]:
    counts = stats["counts"]
    per_split: dict[str, int] = {}
    for shard in stats["per_shard"]:
        split = shard["shard"].split("/", 1)[0]
        per_split[split] = per_split.get(split, 0) + shard["samples"]
    planned = files.plan.num_samples if files.plan is not None else counts.get("samples", 0) + len(files.errors)
    errors_per_shard: dict[str, int] = {}
    for row in files.errors:
        if row.get("split") and row.get("shard"):
            label = f"{row['split']}/{row['shard']}"
            errors_per_shard[label] = errors_per_shard.get(label, 0) + 1
    scan_seconds = sum(s["seconds"] for s in stats["per_shard"])
    by_reason: dict[tuple[str, str], int] = {}
    for row in files.errors:
        why = (str(row.get("stage") or "?"), str(row.get("reason") or "?"))
        by_reason[why] = by_reason.get(why, 0) + 1
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "producer": f"uti {uti.__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": cfg.out, "token_space_id": files.expected.id, "config": cfg.to_dict(),
        "summary": {
            "shards": len(stats["per_shard"]), "samples": counts.get("samples", 0),
            "samples_per_split": per_split,
            "samples_per_modality": {m: counts[f"{m}.samples"] for m in ("audio", "image", "text") if f"{m}.samples" in counts},
            "planned_rows": planned, "errors": len(files.errors),
            "error_rate": len(files.errors) / planned if planned else 0.0,
            # errors.jsonl rows by (stage, reason), most frequent first
            "errors_by_reason": [{"stage": st, "reason": r, "count": n}
                                 for (st, r), n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))],
            "bytes": counts.get("bytes", 0), "seconds": round(seconds, 2),
            # Per task, i.e. per core: the figure a disk-speed target is stated in.
            "scan_mb_per_s_per_task": round(counts.get("bytes", 0) / 1e6 / scan_seconds, 1) if scan_seconds else None,
        },
        "checks": [c.to_dict() for c in checks],
        "errors_per_shard": errors_per_shard,
        **{k: stats[k] for k in ("codebooks", "lengths", "per_split", "per_shard", "codec", "loader", "overrides",
                                  "encode_policies")},
    }
    return report


def _verdict(report: dict[str, Any]) -> None:
    report["failed_hard"] = [c["name"] for c in report["checks"] if c["hard"] and not c["ok"]]
    report["warnings"] = [c["name"] for c in report["checks"] if c["status"] == "WARN"]
    report["ok"] = not report["failed_hard"]
