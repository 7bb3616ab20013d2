"""Driver side of `uti train`: prepare the run folder, check every token space BEFORE any worker
starts, start (or join) Ray, run the TorchTrainer, then plot.

Run folder (RUN):

    run_config.json            the TrainConfig of the latest start
    token_space.json/.sha256   the run's token space (first input's, or the checkpoint's on resume)
    codec_config.json          the UTIConfig the data was tokenized with (OUT/job.json "config"),
                               so `uti generate` can rebuild the codecs to decode
    overrides.json             token-space mismatches accepted with --allow-token-space-mismatch
    audio_scale.json           segmented audio codecs (EnCodec 48 kHz): the loudness scale generation
                               decodes with (train.audio_scale)
    checkpoints/step-NNNNNN/   see train.checkpoint
    metrics.jsonl, loss.png    per-step metrics and the loss plot (train.metrics)
    text_drift.json            text-only loss on held-out captions before/after
    summary.json               what this start did: steps, throughput, loss first/last, warnings
    ray/                       Ray Train's own storage (RunConfig.storage_path)

Every local path (--data, --out, --model) is made absolute here, on the driver: Ray workers run in
other folders. `--num-workers 0` runs the loop in this process through Ray Train's local mode, with no
Ray started or joined: for a debugger, and for short runs where starting Ray's processes (seconds) costs
more than the training. Ctrl-C stops the run at once (the workers are killed; checkpoints are atomic) and
raises TrainInterrupted naming the step `--resume` continues from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sharding.outdir import JOB_NAME, load_job, load_space, path_of
from sharding.storage import storage_errors
from train.audio_scale import write_scale
from train.census import check_training_input, resolve_splits
from train.checkpoint import (
    check_loadable, checkpoint_space, latest_checkpoint, list_checkpoints, read_trainer_state,
)
from train.config import TrainConfig, TrainError, TrainInterrupted, absolute, flag
from train.metrics import METRICS_NAME, plot_loss, read_metrics
from train.model import local_model_vocab, vocab_warning
from train.ray_train_patches import (  # noqa: F401 - RAY_TRAIN_ENV: re-exported, tests read what a run sets
    RAY_TRAIN_ENV, owns_local_instance, patched_trainer_class, quiet_local_mode, ray_train_env,
)
from uti.errors import TokenSpaceError, UTIError
from uti.progress import DEFAULT_EVERY, check_every
from uti.token_space import JSON_NAME, TokenSpace, require_same

log = logging.getLogger(__name__)

CODEC_CONFIG = "codec_config.json"
OVERRIDES = "overrides.json"
SUMMARY = "summary.json"
# run_config keys that must not change across a resume (the data position depends on them)
# (--num-workers may change: the workers share out the rest of the data position, train.stream load_elastic)
_RESUME_FIXED = ("data", "split", "seq_len", "seed", "model", "batch_size", "trainable_rows", "mix",
                 "overlong", "data_weights", "mix_by", "shuffle_buffer")


@dataclass
class TrainResult:
    run: Path
    start_step: int
    last_step: int
    checkpoint: Path | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # also logged when they arise; the CLI repeats them
    text_drift: dict[str, Any] | None = None  # RUN/text_drift.json: held-out text-only loss before/after


def load_input_space(out: str) -> TokenSpace:
    """OUT/token_space.json, checked against OUT/token_space.sha256 (local path or fsspec URL; sharding.outdir).
    The first read of an input: a store that cannot be reached (credentials, endpoint) is one StorageError line."""
    try:
        with storage_errors(out, "--data"):
            return load_space(out)
    except TokenSpaceError as exc:
        raise TrainError(f"--data {out}: {exc}") from None


def _copy_codec_config(run: Path, out: str) -> None:
    """RUN/codec_config.json from the first input's job.json, so `uti generate` can decode without OUT."""
    try:
        job = load_job(out, flag="--data")
        if job is not None:
            (run / CODEC_CONFIG).write_text(json.dumps(job["config"], indent=2, sort_keys=True) + "\n")
            return
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s has no usable \"config\" (%s); `uti generate` will not be able to decode",
                    path_of(out, JOB_NAME), exc)
        return
    if not (run / CODEC_CONFIG).is_file():
        log.warning("%s has no %s: `uti generate` will need %s in the run folder to decode", out, JOB_NAME, CODEC_CONFIG)


def resume_config(out: str, given: dict[str, Any]) -> TrainConfig:
    """The config of `uti train --out RUN --resume [flags]`: the latest checkpoint's run_config.json
    with the flags the user gave on top. A given flag that differs from the run's value where the
    model or the data position depends on it is refused, naming the flag; others (--steps may grow,
    --lr, --checkpoint-every, --address, ...) apply from this start on."""
    run = Path(absolute(out))
    ckpt = _checkpoint_to_resume(run)
    path = ckpt / "run_config.json"
    try:
        stored = TrainConfig.from_dict(json.loads(path.read_text()), where=str(path)).to_dict()
    except (OSError, ValueError) as exc:
        raise TrainError(f"{path}: unreadable ({exc}); the checkpoint is damaged") from None
    merged = TrainConfig.from_dict(stored | dict(given) | {"out": str(run), "resume": True},
                                   where="uti train --resume").resolved()
    _refuse_fixed_changes(ckpt, stored, merged.to_dict(), keys=[k for k in _RESUME_FIXED if k in given],
                          clause="{flag} {now} differs from the run's {saved}",
                          fix="The model and the data position depend on these: drop the flag(s) to keep the run's "
                              "values, or start a new --out")
    return merged


def _checkpoint_to_resume(run: Path) -> Path:
    """The latest complete checkpoint of the run a --resume continues; refused, naming the fix, when none is."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise TrainError(f"--resume: {run} has no complete checkpoint (checkpoints/step-*/COMPLETE); start "
                         "without --resume")
    return ckpt


def _refuse_fixed_changes(ckpt: Path, saved: dict[str, Any], now: dict[str, Any], *, keys: Sequence[str],
                          clause: str, fix: str) -> None:
    """Refuse a resume from `ckpt` whose values of `keys` (of _RESUME_FIXED) differ from the run's: one
    `clause` (with {flag}, {saved} and {now}) per key that differs, then `fix`."""
    changed = [k for k in keys if _norm(now.get(k)) != _norm(saved.get(k))]
    if changed:
        raise TrainError(f"--resume from {ckpt}: "
                         + "; ".join(clause.format(flag=flag(k), saved=_show(saved.get(k)), now=_show(now.get(k)))
                                     for k in changed)
                         + f". {fix}")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    return str(value)


def prepare_run(cfg: TrainConfig) -> dict[str, Any]:
    """Everything that can fail before Ray starts: paths, token spaces, resume consistency, run folder.
    Returns the workers' train_loop_config."""
    cfg = cfg.resolved()
    run = Path(cfg.out)
    inputs = list(cfg.data)
    spaces = [load_input_space(d) for d in inputs]
    ckpt = _checkpoint_to_resume(run) if cfg.resume else latest_checkpoint(run)
    if cfg.resume:
        run_space, run_what = checkpoint_space(ckpt), f"checkpoint {ckpt}"
        state = read_trainer_state(ckpt)
        check_loadable(ckpt, int(state.get("world_size", cfg.num_workers)))
        saved = json.loads((ckpt / "run_config.json").read_text())
        _refuse_fixed_changes(ckpt, saved, cfg.to_dict() | {"data": inputs}, keys=_RESUME_FIXED,
                              clause="{flag} was {saved}, now {now}",
                              fix="The data position and model depend on these, so resume with the same values "
                                  "(or start a new --out)")
        if int(state["step"]) >= cfg.steps:
            raise TrainError(f"--resume: {ckpt} is already at step {state['step']} >= --steps {cfg.steps}; raise --steps "
                             "to train further")
        schedule = schedule_steps(state, saved, cfg.steps)
        if schedule != cfg.steps:
            log.warning("%s", schedule_note(schedule, cfg))
    else:
        schedule = cfg.steps
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
    # The split of each input (--split NAME or one per --data; aliases such as train = development;
    # the splits that exist when one is missing), then what the shard indexes say about --mix and
    # --seq-len: console warnings, and a refusal when no task can produce a sequence (train.census).
    splits = resolve_splits(inputs, cfg.split)
    for line in check_training_input(inputs, splits, cfg):
        log.warning("%s", line)
    if cfg.model != "tiny":
        local_model_vocab(cfg.model)  # fails here, naming the folder, instead of on every worker
    if cfg.model != "tiny" and os.path.isfile(os.path.join(cfg.model, JSON_NAME)):
        try:  # a model folder exported by a previous run carries its token space: fine-tuning must match
            record = require_same(run_space, TokenSpace.load(cfg.model), what=f"--model {cfg.model}",
                                  override=cfg.allow_token_space_mismatch,
                                  fix=f"fine-tune a model trained on this token space, or pass "
                                      f"--allow-token-space-mismatch (recorded in {OVERRIDES})")
        except UTIError as exc:
            raise TrainError(str(exc)) from None
        if record:
            overrides.append(record | {"time": time.time()})

    run.mkdir(parents=True, exist_ok=True)
    run_space.write(run)
    (run / "run_config.json").write_text(json.dumps(cfg.to_dict() | {"data": inputs}, indent=2, sort_keys=True) + "\n")
    if overrides:
        old = json.loads((run / OVERRIDES).read_text()) if (run / OVERRIDES).is_file() else []
        (run / OVERRIDES).write_text(json.dumps(old + overrides, indent=2, sort_keys=True) + "\n")
    _copy_codec_config(run, inputs[0])
    write_scale(run, inputs, run_space)
    return {
        "train": cfg.to_dict() | {"data": inputs},
        "run": str(run),
        "inputs": [{"out": out, "token_space_id": s.id, "split": split} for out, s, split in zip(inputs, spaces, splits)],
        "resume_from": str(ckpt) if cfg.resume else None,
        "eval_inputs": _eval_inputs(cfg, inputs, spaces, splits),
        "lr_schedule_steps": schedule,
    }


def schedule_steps(state: dict[str, Any], saved_config: dict[str, Any], steps: int) -> int:
    """The step count the LR schedule of a resumed run spans: the one its first start fixed (recorded in
    every checkpoint's trainer_state.json; a checkpoint whose trainer_state.json lacks it spans its own
    run_config's --steps). A resume never recomputes the cosine over a new --steps: the LR would jump."""
    recorded = state.get("lr_schedule_steps") or saved_config.get("steps")
    return int(recorded) if recorded else int(steps)


def schedule_note(schedule: int, cfg: TrainConfig) -> str:
    """The console line of a resume whose --steps differs from the LR schedule's."""
    floor = f"{0.1 * cfg.lr:.3g}"
    if cfg.steps > schedule:
        return (f"--steps {cfg.steps}: the LR schedule stays the one of --steps {schedule} (warmup, then cosine down "
                f"to 10% of --lr at step {schedule}); steps {schedule + 1}..{cfg.steps} train at that floor ({floor}), "
                "so the LR does not jump up at the resume")
    return (f"--steps {cfg.steps}: the LR schedule stays the one of --steps {schedule}; the run ends at step "
            f"{cfg.steps}, before the cosine reaches its 10% floor ({floor})")


def _eval_inputs(cfg: TrainConfig, inputs: list[str], spaces: list[TokenSpace], splits: list[str]) -> list | None:
    """The --eval-split of each input (aliases as --split; a missing one fails here, naming it)."""
    if cfg.eval_split is None:
        return None
    evals = resolve_splits(inputs, cfg.eval_split)
    for out, train_split, eval_split in zip(inputs, splits, evals):
        if eval_split == train_split:
            log.warning("--eval-split: %s evaluates on %r, the split it trains on: the evaluation loss is not "
                        "held out", out, eval_split)
    return [{"out": out, "token_space_id": s.id, "split": split} for out, s, split in zip(inputs, spaces, evals)]


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

    # At least one logical CPU per worker, so a small machine still schedules them. The log hook is for a
    # joined cluster only, where Ray Train's placement-group cleaner runs: a local instance this starts
    # has no cleaner (see _make_trainer), and any job runtime env made Ray leave the workers it prestarts
    # idle and start a new one for every actor (controller, coordinator, workers: ~1 s each on 2 cores).
    return connect(address, num_cpus=max(num_workers, os.cpu_count() or 1),
                   runtime_env=RUNTIME_ENV if address else None)


def train(cfg: TrainConfig, *, progress_every: float = DEFAULT_EVERY) -> TrainResult:
    """Run `uti train`: returns where it ended; raises TrainError (naming the fix) on any refusal and
    TrainInterrupted on Ctrl-C. `progress_every`: seconds between two progress lines when stderr is not a
    terminal (uti.progress)."""
    import ray

    from train.progress import follow_metrics

    check_every(progress_every)
    cfg = cfg.resolved()
    loop_config = prepare_run(cfg)
    run = Path(loop_config["run"])
    start_step = int(read_trainer_state(loop_config["resume_from"])["step"]) if loop_config["resume_from"] else 0
    warnings = model_warnings(cfg, TokenSpace.load(run))
    for warning in warnings:  # now, while it matters; the CLI repeats them after the run
        log.warning("%s", warning)
    in_process = cfg.num_workers == 0
    if in_process:
        check_in_process(cfg)
    started = False if in_process else ensure_ray(cfg.address, cfg.num_workers)
    t0 = time.time()
    try:
        if not in_process:
            check_resources(cfg, ray.cluster_resources())
        trainer = None
        try:
            with quiet_local_mode(in_process):  # Ray Train logs both when the trainer is made and in fit()
                trainer = _make_trainer(cfg, loop_config, run, own_instance=owns_local_instance())
                with (follow_metrics(run / METRICS_NAME, start_step=start_step, last_step=cfg.steps,
                                     every=progress_every),
                      ray_train_env(local=started and not cfg.address)):
                    trainer.fit()
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (uti.ray_local.Terminated carries signum)
            _stop(trainer, started)
            started = False
            raise _interrupted(run, signum=int(getattr(exc, "signum", 2))) from None
        except Exception as exc:  # Ray wraps worker errors; surface ours as one clear line
            cause = _root_cause(exc)
            if isinstance(cause, UTIError):
                where = "in this process (--num-workers 0)" if in_process else "on a worker"
                raise TrainError(f"training failed {where}: {cause}") from exc
            raise
    finally:
        if started:
            ray.shutdown()
    wall = time.time() - t0
    rows = [r for r in read_metrics(run) if r["step"] > start_step]
    plot_loss(run)
    ckpt = latest_checkpoint(run)
    summary = summarize(rows, start_step=start_step, wall_s=wall, cfg=cfg) | {"token_space_id": TokenSpace.load(run).id,
                                                                              "warnings": warnings}
    (run / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return TrainResult(run=run, start_step=start_step, last_step=rows[-1]["step"] if rows else start_step,
                       checkpoint=ckpt, metrics=rows, summary=summary, warnings=warnings,
                       text_drift=_read_drift(run))


def check_in_process(cfg: TrainConfig) -> None:
    """--num-workers 0 (Ray Train's local mode: the loop runs here, as one process): refuse what it cannot
    do before anything runs."""
    if cfg.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise TrainError("--use-gpu with --num-workers 0 but this machine has no CUDA GPU torch can use; "
                             "drop --use-gpu to train on the CPU")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Ray Train would join torchrun's process group, and every rank would write the same run folder.
        raise TrainError(f"--num-workers 0 trains in one process, but this is rank {os.environ.get('RANK', '?')} "
                         f"of {os.environ['WORLD_SIZE']} (torchrun); run `uti train` once with --num-workers N instead")


def model_warnings(cfg: TrainConfig, space: TokenSpace) -> list[str]:
    """What the user should know before training starts (the workers only log to their own files)."""
    if cfg.model == "tiny":
        return []
    warning = vocab_warning(cfg.model, space, local_model_vocab(cfg.model))
    return [warning] if warning else []


def _read_drift(run: Path) -> dict[str, Any] | None:
    from train.loop import TEXT_DRIFT

    try:
        return json.loads((run / TEXT_DRIFT).read_text())
    except (OSError, ValueError):
        return None


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What Ray Train's ScalingConfig asks per worker by default: 1 GPU with --use-gpu, else 1 CPU."""
    return {"GPU": 1.0} if cfg.use_gpu else {"CPU": 1.0}


def resource_shortfall(cfg: TrainConfig, total: dict[str, float]) -> str | None:
    """Why the cluster (its total resources) can never place the workers, or None when it can."""
    have = _show_resources(total)
    for name, per_worker in worker_resources(cfg).items():
        need, got = per_worker * cfg.num_workers, float(total.get(name, 0.0))
        if got >= need:
            continue
        if name == "GPU" and got == 0:
            return f"--use-gpu but this Ray cluster has no GPUs (resources: {have})"
        what = "--use-gpu " if name == "GPU" else ""
        return (f"{what}--num-workers {cfg.num_workers} needs {need:g} {name}(s), one per worker, but this Ray "
                f"cluster has {got:g} (resources: {have})")
    return None


def check_resources(cfg: TrainConfig, total: dict[str, float]) -> None:
    """Fail at once when the workers cannot be placed (Ray would wait forever at 0/N); with
    --wait-for-resources (an autoscaling cluster) say what the run waits for, then wait."""
    problem = resource_shortfall(cfg, total)
    if problem is None:
        return
    if cfg.wait_for_resources:
        log.warning("%s; waiting for them (--wait-for-resources): an autoscaler may add nodes. Ctrl-C stops", problem)
        return
    fix = "drop --use-gpu to train on CPUs, " if cfg.use_gpu else ""
    raise TrainError(f"{problem}; {fix}use fewer --num-workers, join a larger cluster with --address, or pass "
                     "--wait-for-resources if an autoscaler will add nodes")


def _show_resources(total: dict[str, float]) -> str:
    parts = []
    for name in sorted(total, key=lambda k: (k not in ("CPU", "GPU"), k)):
        if name.startswith("node:") or name == "object_store_memory" or name.startswith("accelerator_type:"):
            continue
        value = total[name]
        parts.append(f"{name} {value / 2**30:.1f} GiB" if name == "memory" else f"{name} {value:g}")
    return ", ".join(parts) or "none"


def _make_trainer(cfg: TrainConfig, loop_config: dict[str, Any], run: Path, *, own_instance: bool = False):
    """The TorchTrainer of a run: Ray Train's, with the patches of train.ray_train_patches (Ctrl-C goes
    through as KeyboardInterrupt; without the actors a run does not use, and with `own_instance` without
    those a local instance this process started has nothing for)."""
    from ray.train import RunConfig, ScalingConfig

    from train.loop import train_loop_per_worker

    return patched_trainer_class(own_instance=own_instance)(
        train_loop_per_worker,
        train_loop_config=loop_config,
        # Ray's default per worker: 1 CPU, or 1 GPU with use_gpu (worker_resources). num_workers=0 is Ray
        # Train's local mode: fit() runs the loop in this process (train.trainer.run_device picks its device).
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu and cfg.num_workers > 0),
        run_config=RunConfig(storage_path=str(run / "ray"), name=cfg.run_name),
    )


def _stop(trainer: Any, started: bool) -> None:
    """Stop the run's Ray work: the controller (its workers are its actors and die with it), and the
    local Ray instance this run started. A checkpoint being written is either renamed complete or
    left as an ignored step-N.tmp folder."""
    import ray

    controller = getattr(trainer, "controller", None)
    if controller is not None:
        try:
            ray.kill(controller, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone is fine
            log.debug("killing the train controller: %s", exc)
    if started:
        ray.shutdown()


def _interrupted(run: Path, *, signum: int) -> TrainInterrupted:
    found = list_checkpoints(run)
    if not found:
        return TrainInterrupted(
            f"interrupted before the first checkpoint, nothing to resume; rerun the command to start again "
            f"(--checkpoint-every N makes a long run resumable)", run=str(run), checkpoint_step=None, signum=signum)
    step = found[-1][0]
    return TrainInterrupted(f"interrupted; `uti train --out {run} --resume` continues from step {step}",
                            run=str(run), checkpoint_step=step, signum=signum)


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
