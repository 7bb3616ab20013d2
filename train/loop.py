"""The per-worker training function that Ray Train's TorchTrainer runs on every worker
(train.runner passes it to TorchTrainer). The work is in train.trainer.Trainer: setup, train_step,
evaluate, log_metrics and save_checkpoint as separate methods, metrics as named sums."""

from __future__ import annotations

from typing import Any

from train.trainer import TEXT_DRIFT, Trainer

__all__ = ["TEXT_DRIFT", "train_loop_per_worker"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    Trainer(config).fit()
