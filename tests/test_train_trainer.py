"""train.trainer and the per-input counts of metrics.jsonl: every line says how many
samples and tokens each --data input gave in that step, summed over ranks, under "inputs".

The data is text-only (no codec runs): two inputs told apart by caption length, as real shards.
"""

from __future__ import annotations

import json

import pytest

from test_train_input import text_input
from train.metrics import StepSums, all_reduce_sums, input_labels, read_metrics
from train.trainer import Trainer

# The keys every metrics.jsonl line had before the Trainer: never renamed or removed.
KEYS = {"step", "loss", "lr", "targets", "tokens", "pad_tokens", "tokens_per_s", "step_s", "data_s", "batch_crc",
        "samples", "docs", "doc_tokens", "overlong", "overlong_dropped", "overlong_split", "split_pieces",
        "no_caption", "no_task", "stray", "time"} \
    | {f"{k}_{t}" for k in ("loss", "batch_docs", "mix", "task") for t in ("a2t", "t2a", "i2t", "t2i", "text")}


def test_labels_are_the_paths_without_credentials():
    assert input_labels(["/data/a", "/data/b", "/data/a"]) == ["/data/a", "/data/b", "/data/a#2"]
    url = "s3://AKIDKEY:s3cr3t@bucket/tok/out?X-Amz-Signature=abc#frag"
    assert input_labels([url, "gs://b/out"]) == ["s3://bucket/tok/out", "gs://b/out"]
    assert input_labels(["https://user:pw@host:9000/out"]) == ["https://host:9000/out"]


def test_sums_are_reduced_by_field_name():
    """Without a process group the reduction is the identity, and fields keep their names and keys."""
    sums = StepSums(ce_sum=1.5, targets=3, tokens=10, pad_tokens=2, batch_crc=7.0, data_s=0.1,
                    ce={"text": 1.5, "a2t": 0.0}, task_targets={"text": 3, "a2t": 0},
                    batch_docs={"text": 2, "a2t": 0}, seq={"samples": 4, "task_text": 2},
                    input_samples={"/x": 3, "/y": 1}, input_tokens={"/x": 9, "/y": 12})
    red = all_reduce_sums(sums)
    assert red.input_tokens == {"/x": 9.0, "/y": 12.0} and red.ce_sum == 1.5 and red.seq["task_text"] == 2.0
    assert list(red.ce) == ["text", "a2t"]


def test_trainer_methods_are_separate_and_short():
    import inspect

    for name in ("fit", "train_step", "evaluate", "save_checkpoint", "log_metrics"):
        assert callable(getattr(Trainer, name)), name
    for name, fn in inspect.getmembers(Trainer, inspect.isfunction):
        assert len(inspect.getsource(fn).splitlines()) <= 40, f"Trainer.{name} is over 40 lines"


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory, default_tokenizer):
    root = tmp_path_factory.mktemp("trainer")
    tok = default_tokenizer
    a = text_input(root, tok, "a", (40,), caption=lambda i: "a a")
    b = text_input(root, tok, "b", (25, 15), caption=lambda i: "b b b b b b b b b b b b")
    return a, b, len(tok.encode_text("a a")), len(tok.encode_text("b b b b b b b b b b b b"))


def _totals(rows: list[dict], label: str, what: str) -> int:
    return sum(r["inputs"][label][what] for r in rows)


def test_metrics_count_samples_and_tokens_per_input(two_inputs, ray_session, tmp_path):
    from uti.cli import main

    a, b, tok_a, tok_b = two_inputs
    run = tmp_path / "RUN"
    args = ["train", "--data", str(a), "--data", str(b), "--data-weights", "0.75,0.25", "--out", str(run),
            "--model", "tiny", "--num-workers", "2", "--seq-len", "64", "--batch-size", "2", "--mix", "text=1",
            "--shuffle-buffer", "4"]
    assert main(args + ["--steps", "8"]) == 0
    rows = read_metrics(run)
    assert all(KEYS <= set(r) for r in rows)  # keys are only ever added
    assert all(set(r["inputs"]) == {str(a), str(b)} for r in rows)
    sa, sb = _totals(rows, str(a), "samples"), _totals(rows, str(b), "samples")
    assert sa + sb == rows[-1]["samples"] > 100  # every sample read, on every rank, counted once
    assert abs(sa / (sa + sb) - 0.75) < 0.05, (sa, sb)
    # the realised share per input: of everything read since the run began, on the line itself
    last = rows[-1]["inputs"]
    assert last[str(a)]["samples_total"] == sa and last[str(b)]["samples_total"] == sb
    assert last[str(a)]["share_samples"] == pytest.approx(sa / (sa + sb))
    assert last[str(b)]["share_tokens"] == pytest.approx(sb * tok_b / (sa * tok_a + sb * tok_b))
    # tokens: media + caption of each sample; every sample of an input has the same caption here
    assert _totals(rows, str(a), "tokens") == sa * tok_a and _totals(rows, str(b), "tokens") == sb * tok_b
    # a resumed run counts only what it reads itself: the sums still match the stream's counter (resumed as
    # one process, in this one: an elastic resume, whose counters start from the old ranks' states)
    assert main(["train", "--out", str(run), "--resume", "--steps", "10", "--num-workers", "0"]) == 0
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert _totals(rows, str(a), "samples") + _totals(rows, str(b), "samples") == rows[-1]["samples"]
    # the totals go on across the resume: they span the whole run, not only the resumed part
    assert rows[-1]["inputs"][str(a)]["samples_total"] == _totals(rows, str(a), "samples")
    state = json.loads((run / "checkpoints" / "step-000010" / "trainer_state.json").read_text())
    assert state["metrics"]["inputs"] == rows[-1]["inputs"]
