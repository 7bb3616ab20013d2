"""Driver side of `uti train`: prepare the run folder, check every token space BEFORE any worker
starts, start (or join) Ray, run the TorchTrainer, then plot.

Run folder (RUN):

    run_config.json            the TrainConfig of the latest start
    token_space.json/.sha256   the run's token space (first input's, or the checkpoint's on resume)
    codec_config.json          the UTIConfig the data was tokenized with (OUT/job.json "config"),
                               so `uti generate` can rebuild the codecs to decode
    overrides.json             token-space mismatches accepted with --allow-token-space-mismatch
    checkpoints/step-NNNNNN/   see train.checkpoint
    metrics.jsonl, loss.png    per-step metrics and the loss plot (train.metrics)
    text_drift.json            text-only loss on held-out captions before/after
    summary.json               what this start did: steps, throughput, loss first/last
    ray/                       Ray Train's own storage (RunConfig.storage_path)
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharding.format import list_shards, url_to_fs
from train.checkpoint import checkpoint_space, latest_checkpoint, list_checkpoints, read_trainer_state
from train.config import TrainConfig, TrainError
from train.metrics import METRICS_NAME, plot_loss, read_metrics
from uti.errors import TokenSpaceError, UTIError
from uti.token_space import JSON_NAME, SHA_NAME, TokenSpace, require_same, sha256_hex

log = logging.getLogger(__name__)

CODEC_CONFIG = "codec_config.json"
OVERRIDES = "overrides.json"
SUMMARY = "summary.json"
# run_config keys that must not change across a resume (the data position depends on them)
_RESUME_FIXED = ("data", "split", "seq_len", "num_workers", "seed", "model", "batch_size", "trainable_rows", "mix",
                 "overlong")


@dataclass
class TrainResult:
    run: Path
    start_step: int
    last_step: int
    checkpoint: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _read(out: str, name: str) -> bytes | None:
    fs, root = url_to_fs(out)
    path = posixpath.join(root, name)
    return fs.cat_file(path) if fs.exists(path) else None


def load_input_space(out: str) -> TokenSpace:
    """OUT/token_space.json, checked against OUT/token_space.sha256 (local path or fsspec URL)."""
    raw, sha = _read(out, JSON_NAME), _read(out, SHA_NAME)
    if raw is None or sha is None:
        raise TrainError(f"--data {out}: no {JSON_NAME} + {SHA_NAME}; is it the OUT folder of `uti tokenize`?")
    try:
        space = TokenSpace.from_json_bytes(raw, where=f"{out}/{JSON_NAME}")
    except TokenSpaceError as exc:
        raise TrainError(str(exc)) from None
    recorded = (sha.decode().split() or [""])[0]
    if recorded != sha256_hex(raw):
        raise TrainError(f"{out}/{SHA_NAME} records {recorded[:16]!r} but {JSON_NAME} hashes to {space.id[:16]}; "
                         "restore both files from the same tokenize job")
    return space


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def prepare_run(cfg: TrainConfig) -> dict[str, Any]:
    """Everything that can fail before Ray starts: token spaces, resume consistency, run folder.
    Returns the workers' train_loop_config."""
    run = Path(cfg.out).resolve()
    inputs = [_abs(d) for d in cfg.data]
    spaces = [load_input_space(d) for d in inputs]
    ckpt = latest_checkpoint(run)
    if cfg.resume:
        if ckpt is None:
            raise TrainError(f"--resume: {run} has no complete checkpoint (checkpoints/step-*/COMPLETE); start "
                             "without --resume")
        run_space, run_what = checkpoint_space(ckpt), f"checkpoint {ckpt}"
        state = read_trainer_state(ckpt)
        saved = json.loads((ckpt / "run_config.json").read_text())
        now = cfg.to_dict() | {"data": inputs}
        changed = [k for k in _RESUME_FIXED if _norm(saved.get(k)) != _norm(now.get(k))]
        if changed:
            raise TrainError(
                f"--resume from {ckpt}: {', '.join(f'{k} was {saved.get(k)!r}, now {now.get(k)!r}' for k in changed)}; "
                "the data position and model depend on these, so resume with the same values (or start a new --out)"
            )
        if int(state["step"]) >= cfg.steps:
            raise TrainError(f"--resume: {ckpt} is already at step {state['step']} >= --steps {cfg.steps}; raise --steps "
                             "to train further")
    else:
        if list_checkpoints(run):
            raise TrainError(f"{run} already holds checkpoints; pass --resume to continue it, or choose a new --out")
        run_space, run_what = spaces[0], f"the first --data input {inputs[0]}"
    overrides = []
    for out, space in zip(inputs, spaces):
        try:
            record = require_same(run_space, space, override=cfg.allow_token_space_mismatch,
                                  what=f"--data {out} (the run's token space is {run_what})")
        except UTIError as exc:
            raise TrainError(f"{exc}; or pass --allow-token-space-mismatch (recorded in {OVERRIDES})") from None
        if record:
            overrides.append(record | {"time": time.time()})
    shard_counts = {}
    for out in inputs:
        refs = list_shards(out, cfg.split)
        if not refs:
            raise TrainError(f"--data {out}: no complete shards for split {cfg.split!r}; check --split")
        shard_counts[out] = len(refs)
    if max(shard_counts.values()) < cfg.num_workers:
        raise TrainError(
            f"--num-workers {cfg.num_workers} but the inputs have at most {max(shard_counts.values())} shard(s) of split "
            f"{cfg.split!r}: every worker needs whole shards; use fewer workers or re-tokenize with smaller shards"
        )
    if cfg.model != "tiny" and os.path.isdir(cfg.model) and os.path.isfile(os.path.join(cfg.model, JSON_NAME)):
        try:  # a model folder exported by a previous run carries its token space: fine-tuning must match
            require_same(run_space, TokenSpace.load(cfg.model), what=f"--model {cfg.model}",
                         override=cfg.allow_token_space_mismatch)
        except UTIError as exc:
            raise TrainError(str(exc)) from None

    run.mkdir(parents=True, exist_ok=True)
    run_space.write(run)
    (run / "run_config.json").write_text(json.dumps(cfg.to_dict() | {"data": inputs}, indent=2, sort_keys=True) + "\n")
    if overrides:
        old = json.loads((run / OVERRIDES).read_text()) if (run / OVERRIDES).is_file() else []
        (run / OVERRIDES).write_text(json.dumps(old + overrides, indent=2, sort_keys=True) + "\n")
    job = _read(inputs[0], "job.json")
    if job is not None:
        try:
            codec_config = json.loads(job.decode("utf-8"))["config"]
            (run / CODEC_CONFIG).write_text(json.dumps(codec_config, indent=2, sort_keys=True) + "\n")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s/job.json has no usable \"config\" (%s); `uti generate` will not be able to decode", inputs[0], exc)
    elif not (run / CODEC_CONFIG).is_file():
        log.warning("%s has no job.json: `uti generate` will need %s in the run folder to decode", inputs[0], CODEC_CONFIG)
    return {
        "train": cfg.to_dict() | {"data": inputs},
        "run": str(run),
        "inputs": [{"out": out, "token_space_id": s.id} for out, s in zip(inputs, spaces)],
        "resume_from": str(ckpt) if cfg.resume else None,
    }


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def ensure_ray(address: str | None, num_workers: int) -> bool:
    """Join the given cluster, or start a local Ray bound to 127.0.0.1 without the dashboard.
    Returns True when this call started Ray (the caller shuts it down)."""
    from train.ray_hooks import RUNTIME_ENV
    from uti.ray_local import connect

    # at least one logical CPU per worker, so a small machine still schedules them
    return connect(address, num_cpus=max(num_workers, os.cpu_count() or 1), runtime_env=RUNTIME_ENV)


def train(cfg: TrainConfig) -> TrainResult:
    """Run `uti train`: returns where it ended; raises TrainError (naming the fix) on any refusal."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.loop import train_loop_per_worker
    from train.progress import follow_metrics

    loop_config = prepare_run(cfg)
    run = Path(loop_config["run"])
    start_step = int(read_trainer_state(loop_config["resume_from"])["step"]) if loop_config["resume_from"] else 0
    started = ensure_ray(cfg.address, cfg.num_workers)
    t0 = time.time()
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            # Ray's default per worker: 1 CPU, or 1 GPU with use_gpu.
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
            run_config=RunConfig(storage_path=str(run / "ray"), name=cfg.run_name),
        )
        try:
            with follow_metrics(run / METRICS_NAME, start_step=start_step, last_step=cfg.steps):
                trainer.fit()
        except Exception as exc:  # Ray wraps worker errors; surface ours as one clear line
            cause = _root_cause(exc)
            if isinstance(cause, UTIError):
                raise TrainError(f"training failed on a worker: {cause}") from exc
            raise
    finally:
        if started:
            ray.shutdown()
    wall = time.time() - t0
    rows = [r for r in read_metrics(run) if r["step"] > start_step]
    plot_loss(run)
    ckpt = latest_checkpoint(run)
    summary = summarize(rows, start_step=start_step, wall_s=wall, cfg=cfg) | {"token_space_id": TokenSpace.load(run).id}
    (run / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return TrainResult(run=run, start_step=start_step, last_step=rows[-1]["step"] if rows else start_step,
                       checkpoint=ckpt, metrics=rows, summary=summary)


def summarize(rows: list[dict[str, Any]], *, start_step: int, wall_s: float, cfg: TrainConfig) -> dict[str, Any]:
    if not rows:
        return {"start_step": start_step, "steps": 0, "wall_s": wall_s}
    loop_s = sum(r["step_s"] for r in rows[1:]) or rows[0]["step_s"]  # the first step includes warm-up
    timed = rows[1:] or rows
    return {
        "start_step": start_step, "last_step": rows[-1]["step"], "steps": len(rows), "wall_s": wall_s,
        "num_workers": cfg.num_workers, "seq_len": cfg.seq_len, "batch_size_per_worker": cfg.batch_size,
        "steps_per_s": len(timed) / loop_s, "tokens_per_s": sum(r["tokens"] for r in timed) / loop_s,
        "data_fraction": sum(r["data_s"] for r in timed) / loop_s,
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
        "loss_last10": sum(r["loss"] for r in rows[-10:]) / len(rows[-10:]),
        "overlong": rows[-1]["overlong"], "overlong_dropped": rows[-1]["overlong_dropped"],
        "overlong_split": rows[-1]["overlong_split"],
    }


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "cause", None) or exc.__cause__
        if nxt is None:
            # Ray's TrainingFailedError keeps worker errors in a mapping
            errors = getattr(exc, "worker_failures", None) or getattr(exc, "errors", None)
            if isinstance(errors, dict) and errors:
                nxt = next(iter(errors.values()))
        if nxt is None:
            return exc
        exc = nxt
    return exc
