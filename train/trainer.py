"""The Trainer that every Ray Train worker runs (train.loop.train_loop_per_worker builds one; with
--num-workers 0 the driver runs it, through Ray Train's local mode).

Order of a worker's start (`Trainer.__init__`): build the model (same seed on every rank) -> load the
checkpoint's weights into the plain model -> trainable-rows masks -> wrap (DDP through
ray.train.torch.prepare_model; FSDP2 `fully_shard` when asked, which also runs on CPU with gloo) ->
optimizer/scheduler -> data stream -> on resume: optimizer/scheduler state and the data state (the
same --num-workers: each rank its own, so batches are bit-identical to an uninterrupted run; another
--num-workers: every rank reads all old ranks' data states, train.stream load_elastic) -> the
text-only loss before training (drift check).

`fit()` then runs the steps: each rank takes `batch_size` packed rows from its own stream
(`train_step`); the loss is the mean cross-entropy over its target tokens (DDP averages gradients
across ranks). A step's metrics are named sums (train.metrics.StepSums) added up over ranks with one
all_reduce, and rank 0 appends them to RUN/metrics.jsonl (`log_metrics`). `evaluate` and
`save_checkpoint` run on every rank (both are collective).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.checkpoint import load_data_state, load_tensors, save_checkpoint
from train.config import TASKS, TrainConfig
from train.metrics import EvalSums, MetricsLog, StepSums, all_reduce_sums, eval_row, input_labels, metrics_row
from train.model import (
    PackedLM, build_model, freeze_for_trainable_rows, load_model_state, text_rows_end, token_losses,
)
from train.sequences import NO_TASK, Packer, Specials
from train.stream import BatchStream, batch_checksum, heldout_text_docs
from uti.token_space import TokenSpace

log = logging.getLogger(__name__)
TEXT_DRIFT = "text_drift.json"


def run_device(cfg: TrainConfig) -> torch.device:
    """This worker's device: Ray Train's choice for its workers; with --num-workers 0 (the loop runs in the
    driver, Ray Train's local mode) the first visible GPU with --use-gpu, else the CPU, whatever else the
    machine has."""
    if cfg.num_workers == 0:
        return torch.device("cuda", 0) if cfg.use_gpu else torch.device("cpu")
    import ray.train.torch

    return ray.train.torch.get_device()


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, world_size: int, device: torch.device) -> torch.nn.Module:
    """DDP (Ray's prepare_model) or FSDP2 around the model on `device`; one process (--num-workers 0) has
    no process group and nothing to wrap."""
    if cfg.num_workers == 0:
        return model.to(device)
    if not cfg.fsdp:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy="ddp")
    # Ray's prepare_model(parallel_strategy="fsdp") refuses CPU; FSDP2 works on CPU with gloo.
    from torch.distributed.fsdp import fully_shard

    model = model.to(device)
    if world_size > 1:
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
    return model


def param_groups(model: torch.nn.Module, cfg: TrainConfig, row_params: list[torch.nn.Parameter] | None) -> list[dict]:
    if row_params is not None:
        # Decay of trainable rows is applied by hand (Trainer._optimizer_step) so frozen rows are never decayed.
        return [{"params": row_params, "weight_decay": 0.0}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)  # no decay on norms and biases
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig, schedule_steps: int | None = None):
    """The LR factor per step: linear warmup, then cosine down to 10% at `schedule_steps` (default
    --steps), then 10% on. A resume keeps its run's `schedule_steps` whatever --steps it gives (see
    train.runner.schedule_steps), so the LR never jumps at a resume."""
    total = cfg.steps if schedule_steps is None else int(schedule_steps)

    def f(step: int) -> float:  # linear warmup, then cosine down to 10%
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@torch.no_grad()
def text_loss(model: torch.nn.Module, docs: list, *, seq_len: int, pad_id: int, vocab_size: int,
              device) -> float | None:
    """Mean next-token loss of text-only docs (the drift check); every rank runs it (FSDP needs all)."""
    if not docs:
        return None
    packer = Packer(seq_len=seq_len, pad_id=pad_id)
    for d in docs:
        packer.add(d)
    packer.flush()
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    while (row := packer.pop_row()) is not None:
        ce, _ = token_losses(model, torch.as_tensor(row.input_ids[None], device=device),
                             torch.as_tensor(row.position_ids[None], device=device),
                             torch.as_tensor(row.targets[None], device=device), vocab_size)
        total += float(ce.sum())
        count += int(ce.numel())
    model.train(was_training)
    return total / max(count, 1)


def per_task(batch: dict, ce: torch.Tensor, sel: torch.Tensor, device) -> tuple[dict[str, float], dict[str, int]]:
    """Cross-entropy summed per task, and target tokens per task, of a batch's losses `ce` (at `sel`)."""
    task_of = torch.as_tensor(batch["task_ids"], device=device)[:, 1:][sel]
    ce_d = ce.detach().double()
    sums = torch.bincount(task_of, weights=ce_d, minlength=len(TASKS)).tolist()
    counts = torch.bincount(task_of, minlength=len(TASKS)).tolist()
    return dict(zip(TASKS, sums)), dict(zip(TASKS, counts))


class Trainer:
    """One Ray Train worker's training run: `Trainer(config).fit()`. `config` is the driver's
    train_loop_config (train.runner.prepare_run): "train" (TrainConfig as a dict), "run", "inputs",
    "eval_inputs" and, on resume, "resume_from"."""

    def __init__(self, config: dict[str, Any]):
        import ray.train

        self.config = config
        self.cfg = TrainConfig.from_dict(config["train"], where="train_loop_config.train")
        self.run = Path(config["run"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = run_device(self.cfg)
        self.space = TokenSpace.load(self.run)
        self.sp = Specials.from_space(self.space)
        self.vocab = self.space.vocab_size
        self.resume_from = config.get("resume_from")
        self.start_step, self.trainer_state = 0, {}
        self._setup_model()
        self.optimizer = torch.optim.AdamW(param_groups(self.base, self.cfg, self.row_params), lr=self.cfg.lr,
                                           betas=(0.9, 0.95), eps=1e-8)
        self.schedule_steps = int(config.get("lr_schedule_steps") or self.cfg.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg, self.schedule_steps))
        self.stream = self._new_stream(config["inputs"])
        if self.resume_from:
            self._resume()
        self._setup_drift()
        self.metrics = MetricsLog(self.run, resume_step=self.start_step) if self.rank == 0 else None
        self.labels = input_labels(i["out"] for i in config["inputs"])
        self._read = ([0] * len(self.labels), [0] * len(self.labels))  # stream counters at the last step
        self.last: dict[str, Any] = {}  # rank 0: the last metrics.jsonl line

    # ---- setup ----------------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        """The model (checkpoint weights loaded into the plain model before wrapping), trainable-rows
        masks, and the DDP/FSDP wrap around PackedLM."""
        cfg = self.cfg
        model, self.model_info = build_model(cfg.model, self.space, seed=cfg.seed, seq_len=cfg.seq_len)
        self.hf_config = model.config
        if self.resume_from:
            ckpt = Path(self.resume_from)
            load_model_state(model, load_tensors(ckpt / "model.pt"), where=f"{self.resume_from}/model.pt")
            self.trainer_state = json.loads((ckpt / "trainer_state.json").read_text())
            self.start_step = int(self.trainer_state["step"])
        model = model.to(self.device)
        self.row_params = None
        self.trainable = (text_rows_end(self.space), self.vocab)
        if cfg.trainable_rows:
            self.row_params = freeze_for_trainable_rows(model, first_row=self.trainable[0], end_row=self.trainable[1])
        self.base = model
        self.model = wrap_model(PackedLM(model), cfg, self.world, self.device)
        self.model.train()

    def _new_stream(self, inputs: list[dict[str, str]]) -> BatchStream:
        return BatchStream(inputs, cfg=self.cfg, sp=self.sp, vocab_size=self.vocab, rank=self.rank,
                           world_size=self.world)

    def _resume(self) -> None:
        """Optimizer and scheduler state, then the data position: exact with the same world size,
        elastic (the rest of every begun epoch shared out anew) with another."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        ckpt = Path(self.resume_from)
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=load_tensors(ckpt / "optimizer.pt"),
                                 options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(load_tensors(ckpt / "scheduler.pt"))
        old_world = int(self.trainer_state.get("world_size", self.world))
        if old_world == self.world:  # exact: the same batches as a run that was never interrupted
            data = load_data_state(ckpt, self.rank)
            self.stream.load_state_dict(data["stream"])
            torch.set_rng_state(data["torch_rng"])
            return
        self.stream.load_elastic([load_data_state(ckpt, r)["stream"] for r in range(old_world)])
        if self.rank == 0:
            log.warning("resuming %s with %d workers instead of %d: the rest of every begun epoch is shared "
                        "out anew (no sample skipped or repeated); batches differ from a %d-worker run",
                        self.resume_from, self.world, old_world, old_world)

    def _setup_drift(self) -> None:
        """Held-out text docs of the first input, and the text-only loss before training (kept from
        the first run of a resumed one)."""
        first = self.config["inputs"][0]
        held = heldout_text_docs(
            first["out"], token_space_id=first["token_space_id"], train_split=self.stream.splits[0], sp=self.sp,
            seq_len=self.cfg.seq_len, limit=self.cfg.eval_texts)
        self.heldout, self.heldout_split = held.docs, held.split
        self.drift_source = {"held_out": held.held_out, "not_held_out": held.not_held_out}
        if not held.held_out and held.docs and self.rank == 0:
            log.warning("text-only loss (text_drift.json): on training captions, not held out: %s", held.not_held_out)
        self.drift_path = self.run / TEXT_DRIFT
        resumed = self.resume_from and self.drift_path.is_file()
        self.drift = json.loads(self.drift_path.read_text()) if resumed else {}
        if "before" not in self.drift:
            self.drift["before"] = {"step": self.start_step, "loss": self._text_loss()}

    def _text_loss(self) -> float | None:
        return text_loss(self.model, self.heldout, seq_len=self.cfg.seq_len, pad_id=self.sp.pad,
                         vocab_size=self.vocab, device=self.device)

    # ---- the run --------------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        t_prev = time.perf_counter()
        for step in range(self.start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            batch = self.stream.next_batch()
            data_s = time.perf_counter() - t0
            lr = self.scheduler.get_last_lr()[0]  # the LR this step trains with
            sums = all_reduce_sums(self.train_step(batch, data_s=data_s))
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            evaluation = self.evaluate() if self._eval_due(step) else None
            self.log_metrics(sums, step=step, lr=lr, dt=dt, evaluation=evaluation)
            if self._due(step, cfg.checkpoint_every):
                self.save_checkpoint(step)
        self.finish()

    def _due(self, step: int, every: int) -> bool:
        """At the last step, and every `every` steps (0: only the last)."""
        return step == self.cfg.steps or bool(every and step % every == 0)

    def _eval_due(self, step: int) -> bool:
        return bool(self.config.get("eval_inputs")) and self._due(step, self.cfg.eval_every)

    def train_step(self, batch: dict[str, np.ndarray], *, data_s: float = 0.0) -> StepSums:
        """Forward, backward and optimizer step on this rank's batch; returns this rank's metric sums."""
        ids = torch.as_tensor(batch["input_ids"], device=self.device)
        targets = torch.as_tensor(batch["targets"], device=self.device)
        positions = torch.as_tensor(batch["position_ids"], device=self.device)
        ce, sel = token_losses(self.model, ids, positions, targets, self.vocab)
        ce.mean().backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.grad_clip)
        self._optimizer_step()
        return self._step_sums(batch, ce, sel, data_s=data_s)

    def _optimizer_step(self) -> None:
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if self.row_params is not None and self.cfg.weight_decay > 0:
            first, end = self.trainable
            with torch.no_grad():  # decoupled weight decay on the trainable rows only
                for p in self.row_params:
                    p[first:end].mul_(1 - lr * self.cfg.weight_decay)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _step_sums(self, batch: dict[str, np.ndarray], ce: torch.Tensor, sel: torch.Tensor, *,
                   data_s: float) -> StepSums:
        ce_by_task, targets_by_task = per_task(batch, ce, sel, self.device)
        task_ids = batch["task_ids"]
        starts = task_ids[(batch["position_ids"] == 0) & (task_ids != NO_TASK)]  # one per doc in the batch
        docs = np.bincount(starts, minlength=len(TASKS))
        real = int((task_ids != NO_TASK).sum())
        samples, tokens = self._read_since_last_step()
        return StepSums(
            ce_sum=float(ce.detach().double().sum()), targets=int(ce.numel()), tokens=real,
            pad_tokens=int(task_ids.size - real), batch_crc=float(batch_checksum(batch) * (self.rank + 1)),
            data_s=data_s, ce=ce_by_task, task_targets=targets_by_task,
            batch_docs={t: int(docs[i]) for i, t in enumerate(TASKS)},
            seq=self.stream.stats.vector_to_dict(self.stream.stats.as_vector()),
            input_samples=samples, input_tokens=tokens)

    def _read_since_last_step(self) -> tuple[dict[str, int], dict[str, int]]:
        """Samples and tokens this rank's stream read per input since the previous step."""
        samples, tokens = list(self.stream.samples_read), list(self.stream.tokens_read)
        (samples_before, tokens_before), self._read = self._read, (samples, tokens)
        return ({label: samples[k] - samples_before[k] for k, label in enumerate(self.labels)},
                {label: tokens[k] - tokens_before[k] for k, label in enumerate(self.labels)})

    # ---- evaluation, metrics, checkpoints -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """The held-out loss per task over `eval_batches` batches per rank, summed over ranks. The
        stream is built anew every time, so every evaluation sees the same batches. Collective."""
        stream = self._new_stream(self.config["eval_inputs"])
        sums = EvalSums(ce={t: 0.0 for t in TASKS}, targets={t: 0 for t in TASKS})
        was_training = self.model.training
        self.model.eval()
        for _ in range(self.cfg.eval_batches):
            batch = stream.next_batch()
            ce, sel = token_losses(self.model, torch.as_tensor(batch["input_ids"], device=self.device),
                                   torch.as_tensor(batch["position_ids"], device=self.device),
                                   torch.as_tensor(batch["targets"], device=self.device), self.vocab)
            ce_by_task, targets_by_task = per_task(batch, ce, sel, self.device)
            for t in TASKS:
                sums.ce[t] += ce_by_task[t]
                sums.targets[t] += targets_by_task[t]
        self.model.train(was_training)
        return eval_row(all_reduce_sums(sums))

    def log_metrics(self, sums: StepSums, *, step: int, lr: float, dt: float, evaluation: dict | None) -> None:
        """Rank 0 appends the step's line (sums over ranks, plus the evaluation's) to metrics.jsonl."""
        if self.rank != 0:
            return
        row = metrics_row(sums, step=step, lr=lr, dt=dt, world=self.world) | (evaluation or {})
        self.last = self.metrics.write(row)

    def save_checkpoint(self, step: int) -> None:
        """Collective: every rank writes its data state, rank 0 the rest (train.checkpoint)."""
        data_state = {"stream": self.stream.state_dict(), "torch_rng": torch.get_rng_state()}
        trainer_state = {"world_size": self.world, "seed": self.cfg.seed, "model": self.cfg.model,
                         "lr_schedule_steps": self.schedule_steps,
                         "model_info": self.model_info, "metrics": self.last if self.rank == 0 else {}}
        save_checkpoint(self.run, step, model=self.model, hf_config=self.hf_config, optimizer=self.optimizer,
                        scheduler=self.scheduler, data_state=data_state, space=self.space, cfg=self.cfg,
                        rank=self.rank, trainer_state=trainer_state)

    def finish(self) -> None:
        """The text-only loss after training (every rank: FSDP needs all), text_drift.json, and the
        final report to Ray Train."""
        import ray.train

        after = self._text_loss()
        if self.rank == 0:
            trainable_rows = self.cfg.trainable_rows
            self.drift.update({"after": {"step": self.cfg.steps, "loss": after}, "heldout_split": self.heldout_split,
                               "heldout_docs": len(self.heldout), **self.drift_source, "trainable_rows": trainable_rows,
                               "frozen_rows": [0, self.trainable[0]] if trainable_rows else None})
            b = self.drift["before"]["loss"]
            self.drift["delta"] = (after - b) if (after is not None and b is not None) else None
            self.drift_path.write_text(json.dumps(self.drift, indent=2, sort_keys=True) + "\n")
            self.metrics.close()
        numbers = {k: v for k, v in self.last.items() if isinstance(v, (int, float))}
        ray.train.report(numbers | {"text_loss_after": after or 0.0})
