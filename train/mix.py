"""What the next doc of a rank is made of: its task (TaskScheduler, by --mix) and, with --data-weights,
the input its sample comes from (InputMixer). Both draw by deficit against their target shares, so the
realised shares stay within about one doc (or sample) of the targets at every step while the order
stays random; both are seeded per draw, so their resume state is a few counters (train.stream saves it).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from sharding.reader import Sample
from train.config import TASKS, TrainError
from train.saved_state import check_keys, in_declared_order

# Every seeded decision of the input pipeline draws from a generator keyed by its coordinates
# (decision_rng): a rank's streams by (seed, input, modality code, epoch[, rank, draw]), the two draws
# here by (seed, rank, salt, draw). The salts keep the task draws and the input draws two unrelated
# random sequences (with the same seed, rank and draw count they would otherwise be one and the same),
# and, being far above any modality code, apart from every stream's keys. Changing them changes every
# run's data order.
TASK_DRAW_SALT = 1_000_003
INPUT_DRAW_SALT = 2_000_003


def decision_rng(*key: int) -> np.random.Generator:
    """A generator for one decision, derived from its coordinates: nothing to carry across resume
    but the counters."""
    return np.random.default_rng([int(k) for k in key])


# ---- the task schedule --------------------------------------------------------------------------------
class TaskScheduler:
    """Draws the next task: weighted by each task's deficit against the mix, seeded per draw."""

    def __init__(self, mix: Mapping[str, float], *, seed: int, rank: int):
        self.mix = {t: float(mix.get(t, 0.0)) for t in TASKS if mix.get(t, 0.0) > 0}
        self.seed, self.rank = int(seed), int(rank)
        self.draws = 0

    def target(self, available: Sequence[str]) -> dict[str, float]:
        total = sum(self.mix[t] for t in available)
        return {t: self.mix[t] / total for t in available}

    def choose(self, available: Sequence[str], done: Mapping[str, int]) -> str:
        """`done`: docs built so far per task (this rank)."""
        target = self.target(available)
        n = sum(done.get(t, 0) for t in available)
        deficit = np.asarray([max(0.0, target[t] * (n + 1) - done.get(t, 0)) for t in available])
        if deficit.sum() <= 0:  # cannot happen (deficits sum to 1), but never divide by zero
            deficit = np.asarray([target[t] for t in available])
        draw = decision_rng(self.seed, self.rank, TASK_DRAW_SALT, self.draws)
        i = int(draw.choice(len(available), p=deficit / deficit.sum()))
        self.draws += 1
        return available[i]


# ---- the input mix (--data-weights) ---------------------------------------------------------------------
class InputMixer:
    """Which input a task's next sample comes from, by --data-weights: a seeded draw weighted by each
    candidate input's deficit against its share (of samples, or of tokens with --mix-by tokens), so
    the realised shares stay within about one sample of the weights while the order stays random.
    Among the inputs that can serve a task, the weights are renormalised: a task only one input can
    serve always reads that one (the task mix comes first)."""

    def __init__(self, weights: Sequence[float], *, mix_by: str, seed: int, rank: int):
        self.weights = [float(w) for w in weights]
        self.mix_by = mix_by
        self.seed, self.rank = int(seed), int(rank)
        self.done = [0] * len(self.weights)  # samples or tokens read per input
        self.samples = [0] * len(self.weights)  # samples read per input (also with --mix-by tokens)
        self.draws = 0
        self.turns: dict[str, int] = {}

    def choose(self, candidates: Sequence[int]) -> int:
        live = [k for k in candidates if self.weights[k] > 0] or list(candidates)
        w = np.asarray([self.weights[k] for k in live], dtype=np.float64)
        if w.sum() <= 0:
            w = np.ones(len(live))
        target = w / w.sum()
        done = np.asarray([self.done[k] for k in live], dtype=np.float64)
        n = float(sum(self.samples[k] for k in live))
        unit = (done.sum() / n) if n else 1.0  # mean units (samples or tokens) per draw so far
        deficit = np.maximum(0.0, target * (done.sum() + unit) - done)
        p = deficit / deficit.sum() if deficit.sum() > 0 else target
        i = int(decision_rng(self.seed, self.rank, INPUT_DRAW_SALT, self.draws).choice(len(live), p=p))
        self.draws += 1
        return live[i]

    def turn(self, task: str, k: int) -> int:
        key = f"{task}:{k}"
        t = self.turns.get(key, 0)
        self.turns[key] = t + 1
        return t

    def count(self, k: int, sample: Sample) -> None:
        self.samples[k] += 1
        self.done[k] += 1 if self.mix_by == "samples" else len(sample.tokens) + len(sample.text)

    STATE_KEYS = ("weights", "mix_by", "done", "samples", "draws", "turns")  # in the order they are written

    def state_dict(self) -> dict:
        return in_declared_order(self.STATE_KEYS, {
            "weights": self.weights, "mix_by": self.mix_by, "done": list(self.done), "samples": list(self.samples),
            "draws": self.draws, "turns": dict(self.turns)})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_keys(state, self.STATE_KEYS, what="data state of the --data-weights mix")
        if [float(w) for w in state["weights"]] != self.weights or state["mix_by"] != self.mix_by:
            raise TrainError(f"data state was saved with --data-weights {state['weights']} --mix-by {state['mix_by']}; "
                             "resume with the run's values")
        self.done = [int(v) for v in state["done"]]
        self.samples = [int(v) for v in state["samples"]]
        self.draws = int(state["draws"])
        self.turns = {str(k): int(v) for k, v in state["turns"].items()}
