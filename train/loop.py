"""The per-worker training function that Ray Train's TorchTrainer runs on every worker.

Order of a worker's start: build the model (same seed on every rank) -> load the checkpoint's
weights into the plain model -> trainable-rows masks -> wrap (DDP through
ray.train.torch.prepare_model; FSDP2 `fully_shard` when asked, which also runs on CPU with gloo)
-> optimizer/scheduler (+ their checkpoint state) -> data stream (+ its per-rank state; resumed with
another --num-workers, every rank reads all old ranks' data states: train.stream load_elastic).

Per step each rank takes `batch_size` packed rows from its own stream; the loss is the mean
cross-entropy over its target tokens (DDP averages gradients across ranks). Metrics are summed
over ranks with one all_reduce of a small vector, and rank 0 appends them to RUN/metrics.jsonl.
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
from train.metrics import MetricsLog
from train.model import (
    PackedLM, build_model, freeze_for_trainable_rows, load_model_state, text_rows_end, token_losses,
)
from train.sequences import NO_TASK, Packer, SeqStats, Specials
from train.stream import BatchStream, batch_checksum, heldout_text_docs
from uti.token_space import TokenSpace

log = logging.getLogger(__name__)
TEXT_DRIFT = "text_drift.json"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist = _dist()
    if dist is not None:
        dist.all_reduce(t)
    return t.tolist()


def _wrap(model: torch.nn.Module, cfg: TrainConfig, world_size: int) -> torch.nn.Module:
    import ray.train.torch

    if not cfg.fsdp:
        return ray.train.torch.prepare_model(model, parallel_strategy="ddp")
    # Ray's prepare_model(parallel_strategy="fsdp") refuses CPU; FSDP2 works on CPU with gloo.
    from torch.distributed.fsdp import fully_shard

    model = model.to(ray.train.torch.get_device())
    if world_size > 1:
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
    return model


def _param_groups(model: torch.nn.Module, cfg: TrainConfig, row_params: list[torch.nn.Parameter] | None) -> list[dict]:
    if row_params is not None:
        # Decay of trainable rows is applied by hand (loop) so frozen rows are never decayed.
        return [{"params": row_params, "weight_decay": 0.0}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)  # no decay on norms and biases
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:  # linear warmup, then cosine down to 10%
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@torch.no_grad()
def text_loss(model: torch.nn.Module, docs: list, *, seq_len: int, pad_id: int, vocab_size: int, device) -> float | None:
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


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: BatchStream, *, batches: int, vocab_size: int, device) -> dict[str, float]:
    """This rank's sums of the evaluation loss per task over `batches` batches of a held-out stream
    (built anew for every evaluation, so every evaluation sees the same batches). Every rank runs it."""
    sums = {f"eval_ce_{t}": 0.0 for t in TASKS} | {f"eval_targets_{t}": 0.0 for t in TASKS}
    was_training = model.training
    model.eval()
    for _ in range(batches):
        batch = stream.next_batch()
        ce, sel = token_losses(model, torch.as_tensor(batch["input_ids"], device=device),
                               torch.as_tensor(batch["position_ids"], device=device),
                               torch.as_tensor(batch["targets"], device=device), vocab_size)
        task_of = torch.as_tensor(batch["task_ids"], device=device)[:, 1:][sel]
        ce_d = ce.double()
        per_sum = torch.bincount(task_of, weights=ce_d, minlength=len(TASKS)).tolist()
        per_n = torch.bincount(task_of, minlength=len(TASKS)).tolist()
        for i, t in enumerate(TASKS):
            sums[f"eval_ce_{t}"] += per_sum[i]
            sums[f"eval_targets_{t}"] += per_n[i]
    model.train(was_training)
    return sums


def eval_row(red: dict[str, float]) -> dict[str, Any]:
    """metrics.jsonl fields of an evaluation from the sums over ranks: eval_loss and eval_loss_T."""
    ce = sum(red[f"eval_ce_{t}"] for t in TASKS)
    n = sum(red[f"eval_targets_{t}"] for t in TASKS)
    return {"eval_loss": ce / n if n else None,
            **{f"eval_loss_{t}": red[f"eval_ce_{t}"] / red[f"eval_targets_{t}"] if red[f"eval_targets_{t}"] else None
               for t in TASKS}}


def step_sums(batch: dict, *, ce_sum: float, n_targets: int, per_task_sum: list[float], per_task_n: list[int],
              crc: int, data_s: float, stats: SeqStats) -> dict[str, float]:
    """One rank's share of a step's metrics, by name; every value is summed over ranks."""
    task_ids = batch["task_ids"]
    starts = task_ids[(batch["position_ids"] == 0) & (task_ids != NO_TASK)]  # one per doc in the batch
    docs = np.bincount(starts, minlength=len(TASKS))
    real = int((task_ids != NO_TASK).sum())
    return {
        "ce_sum": ce_sum, "targets": n_targets, "tokens": real, "pad_tokens": int(task_ids.size - real),
        "batch_crc": float(crc), "data_s": data_s,
        **{f"ce_{t}": per_task_sum[i] for i, t in enumerate(TASKS)},
        **{f"targets_{t}": per_task_n[i] for i, t in enumerate(TASKS)},
        **{f"batch_docs_{t}": int(docs[i]) for i, t in enumerate(TASKS)},
        **SeqStats.vector_to_dict(stats.as_vector()),
    }


def metrics_row(red: dict[str, float], *, step: int, lr: float, dt: float, world: int) -> dict[str, Any]:
    """A metrics.jsonl line from the summed step metrics. `batch_docs_T` are the docs of task T in this
    step's batch, `mix_T` the share of task T among all docs built so far (the realised --mix)."""
    n_tgt = red["targets"]
    all_docs = sum(red[f"task_{t}"] for t in TASKS)
    return {
        "step": step, "loss": red["ce_sum"] / max(n_tgt, 1), "lr": lr, "targets": int(n_tgt),
        "tokens": int(red["tokens"]), "pad_tokens": int(red["pad_tokens"]), "tokens_per_s": red["tokens"] / dt,
        "step_s": dt, "data_s": red["data_s"] / world, "batch_crc": int(red["batch_crc"]),
        **{f"loss_{t}": (red[f"ce_{t}"] / red[f"targets_{t}"]) if red[f"targets_{t}"] else None for t in TASKS},
        **{f"batch_docs_{t}": int(red[f"batch_docs_{t}"]) for t in TASKS},
        **{f"mix_{t}": red[f"task_{t}"] / all_docs if all_docs else None for t in TASKS},
        **{k: int(red[k]) for k in SeqStats.vector_to_dict(SeqStats().as_vector())},
        "time": time.time(),
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["train"], where="train_loop_config.train")
    run = Path(config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    space = TokenSpace.load(run)
    sp = Specials.from_space(space)
    vocab = space.vocab_size
    resume_from = config.get("resume_from")

    model, model_info = build_model(cfg.model, space, seed=cfg.seed, seq_len=cfg.seq_len)
    hf_config = model.config
    start_step, trainer_state = 0, {}
    if resume_from:
        load_model_state(model, load_tensors(Path(resume_from) / "model.pt"), where=f"{resume_from}/model.pt")
        trainer_state = json.loads((Path(resume_from) / "trainer_state.json").read_text())
        start_step = int(trainer_state["step"])
    model = model.to(device)
    row_params = None
    trainable = (text_rows_end(space), vocab)
    if cfg.trainable_rows:
        row_params = freeze_for_trainable_rows(model, first_row=trainable[0], end_row=trainable[1])
    base = model
    model = _wrap(PackedLM(model), cfg, world)
    model.train()

    optimizer = torch.optim.AdamW(_param_groups(base, cfg, row_params), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    stream = BatchStream(config["inputs"], cfg=cfg, sp=sp, vocab_size=vocab, rank=rank, world_size=world)
    if resume_from:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=load_tensors(Path(resume_from) / "optimizer.pt"),
                                 options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(load_tensors(Path(resume_from) / "scheduler.pt"))
        old_world = int(trainer_state.get("world_size", world))
        if old_world == world:  # exact: the same batches as a run that was never interrupted
            data = load_data_state(resume_from, rank)
            stream.load_state_dict(data["stream"])
            torch.set_rng_state(data["torch_rng"])
        else:  # elastic: every rank reads all old ranks' data states and takes its part of what is left
            stream.load_elastic([load_data_state(resume_from, r)["stream"] for r in range(old_world)])
            if rank == 0:
                log.warning("resuming %s with %d workers instead of %d: the rest of every begun epoch is shared "
                            "out anew (no sample skipped or repeated); batches differ from a %d-worker run",
                            resume_from, world, old_world, old_world)

    first = config["inputs"][0]
    heldout, heldout_split = heldout_text_docs(first["out"], token_space_id=first["token_space_id"],
                                               train_split=stream.splits[0], sp=sp, seq_len=cfg.seq_len,
                                               limit=cfg.eval_texts)
    drift_path = run / TEXT_DRIFT
    drift = json.loads(drift_path.read_text()) if (resume_from and drift_path.is_file()) else {}
    if "before" not in drift:
        drift["before"] = {"step": start_step, "loss": text_loss(model, heldout, seq_len=cfg.seq_len, pad_id=sp.pad,
                                                                  vocab_size=vocab, device=device)}
    metrics = MetricsLog(run, resume_step=start_step) if rank == 0 else None

    last: dict[str, Any] = {}
    t_prev = time.perf_counter()
    for step in range(start_step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        batch = stream.next_batch()
        t_data = time.perf_counter() - t0
        ids = torch.as_tensor(batch["input_ids"], device=device)
        targets = torch.as_tensor(batch["targets"], device=device)
        ce, sel = token_losses(model, ids, torch.as_tensor(batch["position_ids"], device=device), targets, vocab)
        loss = ce.mean()
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        if row_params is not None and cfg.weight_decay > 0:
            with torch.no_grad():  # decoupled weight decay on the trainable rows only
                for p in row_params:
                    p[trainable[0]:trainable[1]].mul_(1 - lr * cfg.weight_decay)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        # ---- metrics (one all_reduce of named sums) -------------------------------------------
        task_of = torch.as_tensor(batch["task_ids"], device=device)[:, 1:][sel]
        ce_d = ce.detach().double()
        sums = step_sums(batch, ce_sum=float(ce_d.sum()), n_targets=int(ce.numel()),
                         per_task_sum=torch.bincount(task_of, weights=ce_d, minlength=len(TASKS)).tolist(),
                         per_task_n=torch.bincount(task_of, minlength=len(TASKS)).tolist(),
                         crc=batch_checksum(batch) * (rank + 1), data_s=t_data, stats=stream.stats)
        red = dict(zip(sums, _all_reduce_sum(list(sums.values()))))
        now = time.perf_counter()
        dt = now - t_prev
        t_prev = now
        evaluation = None
        if config.get("eval_inputs") and (step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)):
            held_out = BatchStream(config["eval_inputs"], cfg=cfg, sp=sp, vocab_size=vocab, rank=rank, world_size=world)
            e = evaluate(model, held_out, batches=cfg.eval_batches, vocab_size=vocab, device=device)
            evaluation = eval_row(dict(zip(e, _all_reduce_sum(list(e.values())))))
        if rank == 0:
            row = metrics_row(red, step=step, lr=lr, dt=dt, world=world) | (evaluation or {})
            metrics.write(row)
            last = row
        if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            data_state = {"stream": stream.state_dict(), "torch_rng": torch.get_rng_state()}
            save_checkpoint(run, step, model=model, hf_config=hf_config, optimizer=optimizer, scheduler=scheduler,
                            data_state=data_state, space=space, cfg=cfg, rank=rank,
                            trainer_state={"world_size": world, "seed": cfg.seed, "model": cfg.model,
                                           "model_info": model_info, "metrics": last if rank == 0 else {}})

    after = text_loss(model, heldout, seq_len=cfg.seq_len, pad_id=sp.pad, vocab_size=vocab, device=device)
    if rank == 0:
        drift.update({"after": {"step": cfg.steps, "loss": after}, "heldout_split": heldout_split,
                      "heldout_docs": len(heldout), "trainable_rows": cfg.trainable_rows,
                      "frozen_rows": [0, trainable[0]] if cfg.trainable_rows else None})
        b = drift["before"]["loss"]
        drift["delta"] = (after - b) if (after is not None and b is not None) else None
        drift_path.write_text(json.dumps(drift, indent=2, sort_keys=True) + "\n")
        metrics.close()
    ray.train.report({k: v for k, v in last.items() if isinstance(v, (int, float))} | {"text_loss_after": after or 0.0})
