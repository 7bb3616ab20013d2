"""Faults during `uti train`: a Ray Train worker process SIGKILLed mid-run, then `--resume` from the last
checkpoint; and a checkpoint carrying a pickle payload, refused on resume (weights_only) with nothing run.

Training reads the reference dataset tokenized by the suite (tokenize -> verify -> train, end to end).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time

import pytest
import torch

from train.checkpoint import latest_checkpoint, list_checkpoints
from train.config import TrainConfig, TrainError
from train.metrics import read_metrics
from train.runner import RAY_TRAIN_ENV, train

from .conftest import snapshot, wait_for
from .procs import descendants

pytestmark = [pytest.mark.reliability, pytest.mark.ray]
REPORT_GROUP = "train faults"
STEPS = 24
EVERY = 4
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def _train_processes(title: bytes) -> list[int]:
    """Processes of the suite's own Ray instance (descendants of this process) whose title holds `title`."""
    pids = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if title in fh.read():
                    pids.append(pid)
        except OSError:
            continue
    return sorted(pids)


def _train_workers() -> list[int]:
    return _train_processes(b"RayTrainWorker")


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        pairs = [item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item]
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


@pytest.fixture(scope="module")
def killed_and_resumed(ray_session, clean_run, tmp_path_factory):
    """Train 2 workers; SIGKILL one worker after a seeded checkpoint; resume; return what happened."""
    rng = random.Random(8)
    # kill a random worker once this step is logged: after a checkpoint, before the next one
    kill_at = rng.choice([EVERY, 2 * EVERY]) + rng.randint(1, EVERY - 1)
    run = tmp_path_factory.mktemp("train-kill") / "RUN"
    cfg = TrainConfig(data=(str(clean_run),), out=str(run), num_workers=2, steps=STEPS, seq_len=1024, batch_size=2,
                      checkpoint_every=EVERY, warmup_steps=4, eval_texts=2, seed=0)
    outcome: dict = {}

    def go():
        try:
            outcome["result"] = train(cfg)
        except BaseException as exc:  # noqa: BLE001 - the kill is expected to fail the run
            outcome["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    assert wait_for(lambda: any(r["step"] >= kill_at for r in read_metrics(run)) or not thread.is_alive(),
                    timeout=240)
    workers = _train_workers()
    assert thread.is_alive() and len(workers) == 2, (workers, outcome)
    # what the run's controller and workers were started with (train.runner.RAY_TRAIN_ENV)
    env = {role: [_environ(pid).get(POLL_ENV) for pid in pids]
           for role, pids in (("controller", _train_processes(b"TrainController")), ("workers", workers))}
    # Ray Train's actors for what the run does not use (train.runner._make_trainer leaves them out)
    unused = _train_processes(b"DatasetManager") + _train_processes(b"PlacementGroupCleaner")
    victim = rng.choice(workers)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=180)
    assert not thread.is_alive(), "uti train hung after a worker was killed"
    failed_after = time.time() - killed_at
    before = {r["step"]: r for r in read_metrics(run)}  # what the killed run logged (it may pass the checkpoint)
    ckpt = latest_checkpoint(run)
    t0 = time.time()
    resumed = train(TrainConfig.from_dict(cfg.to_dict() | {"resume": True}))
    return {"run": run, "cfg": cfg, "error": outcome.get("error"), "failed_after": failed_after, "before": before,
            "ckpt": ckpt, "resumed": resumed, "resume_seconds": time.time() - t0, "env": env,
            "unused": unused}


def test_the_train_controller_and_workers_poll_often(killed_and_resumed):
    """`uti train` starts Ray Train with a short health-check interval (Ray's default is 2 s): the controller
    notices a finished or failed run that much sooner, and so does the user."""
    env = killed_and_resumed["env"]
    assert env["controller"] and len(env["workers"]) == 2, env
    assert set(env["controller"] + env["workers"]) == {RAY_TRAIN_ENV[POLL_ENV]}, env
    assert POLL_ENV not in os.environ  # set only while the run runs
    # On the session's own local Ray (started by this process, like `uti train`'s) no DatasetManager (no Ray
    # Dataset is passed in) and no PlacementGroupCleaner (the instance dies with its driver): two processes
    # fewer per run.
    assert killed_and_resumed["unused"] == [], killed_and_resumed["unused"]


def test_train_worker_killed_then_resume_continues(killed_and_resumed, record):
    """A Ray Train worker SIGKILLed mid-run: the run fails fast; --resume continues from the last checkpoint."""
    k = killed_and_resumed
    assert k["error"] is not None, "the run did not notice its worker was killed"
    assert k["failed_after"] < 60
    ckpt_step = int(k["ckpt"].name.split("-")[1])
    last_logged = max(k["before"])
    assert ckpt_step >= EVERY and last_logged < STEPS, (ckpt_step, last_logged)
    res = k["resumed"]
    assert res.start_step == ckpt_step and res.last_step == STEPS
    rows = read_metrics(k["run"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "a step is missing or logged twice"
    # Steps the killed run had already done after its checkpoint are redone identically: same data
    # position (batch checksum) and the same loss, i.e. model, optimizer, scheduler and data state restored.
    redone = [s for s in range(ckpt_step + 1, last_logged + 1)]
    assert redone, "the kill landed right at a checkpoint: nothing to compare"
    for r in rows:
        if r["step"] in redone:
            assert r["batch_crc"] == k["before"][r["step"]]["batch_crc"], r["step"]
            assert abs(r["loss"] - k["before"][r["step"]]["loss"]) < 1e-3, r["step"]
    # the loss continues from where it was, it does not restart from an untrained model
    first = rows[0]["loss"]
    assert rows[ckpt_step]["loss"] < first - 0.5, (first, rows[ckpt_step]["loss"])
    # (batches mix every task since --mix became the realised ratio: the loss falls more slowly than it did
    # on single-modality batches, but a restart from an untrained model would stay near `first`)
    assert sum(r["loss"] for r in rows[-4:]) / 4 < first * 0.6
    assert [s for s, _ in list_checkpoints(k["run"])][-1] == STEPS
    record(f"Ray Train worker SIGKILLed after checkpoint {ckpt_step} (2 workers, {STEPS} steps)", group=REPORT_GROUP,
           runs=2, outcome=f"run failed in {k['failed_after']:.0f} s; --resume from step {ckpt_step}: "
           f"{len(redone)} redone step(s) bit-identical, loss {first:.2f} -> {rows[-1]['loss']:.2f}",
           lost=None, duplicates=None)


class CreatesFile:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("member", ["model.pt", "data-rank00000.pt"])
def test_checkpoint_with_pickle_payload_is_refused_on_resume(member, killed_and_resumed, tmp_path, record):
    """A checkpoint file carrying a pickle payload: resume refuses it (weights_only=True) on the driver, before
    any Ray Train worker starts; nothing runs."""
    k = killed_and_resumed
    run = tmp_path / "RUN"
    shutil.copytree(k["run"], run, ignore=shutil.ignore_patterns("ray"))
    ckpt = latest_checkpoint(run)
    sentinel = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "evil": CreatesFile(str(sentinel))}, ckpt / member)
    before = snapshot(tmp_path, skip=(run,))
    cfg = TrainConfig.from_dict(k["cfg"].to_dict() | {"out": str(run), "resume": True, "steps": STEPS + 4})
    with pytest.raises(TrainError) as exc:
        train(cfg)
    msg = str(exc.value)
    assert f"{member}: cannot be loaded with weights_only=True" in msg and str(ckpt) in msg, msg
    assert not sentinel.exists(), "the checkpoint's pickle payload ran"
    assert not (run / "ray").exists(), "Ray Train started before the checkpoint was checked"
    assert snapshot(tmp_path, skip=(run,)) == before
    torch.load(ckpt / member, weights_only=False)  # sanity: the payload is live when pickle is trusted
    assert sentinel.exists()
    record(f"checkpoint {member} with a pickle payload, then --resume", group="security", runs=1,
           outcome="TrainError before any worker started: cannot be loaded with weights_only=True; payload never "
           "ran", lost=None, duplicates=None)
