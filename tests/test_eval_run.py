"""`uti eval` end to end on a run `uti train` made (in this process) from a set where the caption determines
the audio (train_helpers.tone_dataset): the report's sections and verdicts, the same numbers from two Ray
workers as from this process, the text drift against a base model, baseline gating on a worse checkpoint,
and a checkpoint refused against data of another token space.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sharding.outdir import write_space
from train.checkpoint import list_checkpoints, load_tensors
from train.config import TrainConfig
from train.evaluate.config import EvalConfig
from train.evaluate.generation import GenerationSettings
from train.evaluate.run import run_eval
from train.model import model_from_checkpoint
from train.runner import train
from train_helpers import other_space, tone_dataset
from uti.cli import main

STEPS = 80


@pytest.fixture(scope="module")
def tone_run(tmp_path_factory, default_tokenizer):
    """A run trained on the true pairs with a held-out evaluation every 20 steps and a checkpoint every 20."""
    root = tmp_path_factory.mktemp("eval-run")
    data = tone_dataset(root / "OUT", default_tokenizer)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy 2-core machine: one intra-op thread is several times faster
    try:
        train(TrainConfig(data=(str(data),), out=str(root / "RUN"), num_workers=0, steps=STEPS, seq_len=160,
                          batch_size=8, warmup_steps=5, mix={"t2a": 1.0, "a2t": 1.0, "text": 0.3}, eval_texts=0,
                          eval_split="val", eval_every=20, checkpoint_every=20))
    finally:
        torch.set_num_threads(before)
    return {"root": root, "data": str(data), "run": root / "RUN"}


def evaluate(tone_run, name: str, **kw):
    cfg = EvalConfig(checkpoint=str(kw.pop("checkpoint", tone_run["run"])), data=(tone_run["data"],),
                     out=str(tone_run["root"] / name), num_workers=kw.pop("num_workers", 0),
                     generation=GenerationSettings(n_prompts=4, temperature=0), plots=False, **kw)
    lines: list[str] = []
    return run_eval(cfg, say=lines.append), lines


@pytest.fixture(scope="module")
def in_process(tone_run):
    return evaluate(tone_run, "EVAL", write_baseline=str(tone_run["root"] / "baseline.json"))


def check(report, name):
    return next(c for c in report["checks"] if c["name"] == name)


def test_the_report_has_every_section_and_the_true_pairs_use_their_prompt(in_process, tone_run):
    result, lines = in_process
    rep = json.loads(result.json_path.read_text())
    assert rep["format"] == "uti.eval_report" and rep["step"] == STEPS and rep["split"] == "val"
    assert set(rep["losses"]) == {"t2a", "a2t", "text"} and rep["losses"]["t2a"]["n_samples"] == 12
    t2a = rep["dependence"]["t2a"]
    assert t2a["gap"]["low"] > 0 and t2a["uses_prompt"] and t2a["flag"] is None, t2a
    assert t2a["retrieval"]["k"] == 10 and t2a["retrieval"]["accuracy"] > t2a["retrieval"]["chance"]
    assert check(rep, "dependence.t2a")["verdict"] == "PASS"
    gen = rep["generation"]["t2a"]
    assert gen["failure_rate"] == 0 and gen["check_failures"] == [] and len(gen["files"]) == 4
    assert check(rep, "generation.t2a.decode")["verdict"] == "PASS"
    assert check(rep, "generation.t2a.media")["verdict"] == "PASS"
    for f in gen["files"]:
        assert (result.json_path.parent / f["path"]).is_file() and not f["path"].startswith("/")
    assert gen["memorization"]["n_train"] == 16
    assert rep["collapse"]["source"] == "eval_loss" and len(rep["collapse"]["series"]["t2a"]) == STEPS // 20
    assert "tiny" in rep["skipped"]["text_regression"] and rep["text_regression"] is None
    assert "t2a" in result.html_path.read_text() and "data:audio/wav;base64," in result.html_path.read_text()
    assert any("docs to score" in line for line in lines) and any("dependence.t2a" in line for line in lines)


def test_two_ray_workers_give_the_numbers_of_one_process(in_process, tone_run, ray_session):
    one, _ = in_process
    two, lines = evaluate(tone_run, "EVAL-2", num_workers=2)
    a, b = one.report, two.report
    assert any("Ray tasks (2 shares each" in line for line in lines)
    for task in a["losses"]:
        assert b["losses"][task]["mean"] == pytest.approx(a["losses"][task]["mean"], abs=1e-6)
        assert b["losses"][task]["n_samples"] == a["losses"][task]["n_samples"]
    for task in a["dependence"]:
        assert b["dependence"][task]["gap"]["mean"] == pytest.approx(a["dependence"][task]["gap"]["mean"], abs=1e-6)
    # the prompts split over two workers, each sampling with the same seeds: the same generations
    assert [(f["sample_id"], f["n_frames"]) for f in b["generation"]["t2a"]["files"]] == \
           [(f["sample_id"], f["n_frames"]) for f in a["generation"]["t2a"]["files"]]
    assert b["ok"] == a["ok"]


def test_text_drift_against_a_base_model(tone_run, tmp_path):
    ckpt = list_checkpoints(tone_run["run"])[-1][1]
    same = tmp_path / "same"  # the trained weights themselves, as a base: no drift, exactly
    model_from_checkpoint(ckpt, load_tensors(ckpt / "model.pt")).save_pretrained(str(same))
    result, _ = evaluate(tone_run, "EVAL-same", base_model=str(same))
    t = result.report["text_regression"]
    assert t["drift"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert t["n_docs"] == result.report["losses"]["text"]["n_samples"]
    first = list_checkpoints(tone_run["run"])[0][1]  # step 20: a model that knows the captions less well
    early = tmp_path / "early"
    model_from_checkpoint(first, load_tensors(first / "model.pt")).save_pretrained(str(early))
    result, _ = evaluate(tone_run, "EVAL-early", base_model=str(early), max_text_drift=0.0)
    t = result.report["text_regression"]
    assert t["drift"]["high"] < 0 < t["base"]["mean"] - t["trained"]["mean"], t
    assert check(result.report, "text_regression")["verdict"] == "PASS"


def test_baseline_fails_on_a_worse_checkpoint_naming_the_metric(in_process, tone_run, capsys):
    baseline = tone_run["root"] / "baseline.json"
    assert json.loads(baseline.read_text())["format"] == "uti.eval_baseline"
    early = list_checkpoints(tone_run["run"])[0][1]
    argv = ["eval", "--checkpoint", str(early), "--data", tone_run["data"], "--out", str(tone_run["root"] / "EVAL-b"),
            "--num-workers", "0", "--prompts", "2", "--temperature", "0", "--no-plots"]
    assert main(argv + ["--baseline", str(baseline)]) == 1
    report = json.loads((tone_run["root"] / "EVAL-b" / "report.json").read_text())
    gate = check(report, "baseline")
    assert gate["verdict"] == "FAIL" and gate["hard"] and "loss.t2a" in gate["detail"]
    reg = next(r for r in report["baseline"]["regressions"] if r["metric"] == "loss.t2a")
    assert reg["current"] > reg["baseline"] + 0.05
    assert "FAIL" in capsys.readouterr().out


def test_a_checkpoint_and_data_of_another_token_space_are_refused(tone_run, default_space, tmp_path, capsys):
    other = tmp_path / "OTHER"
    shutil.copytree(tone_run["data"], other)
    changed = other_space(default_space)
    write_space(other, changed)
    code = main(["eval", "--checkpoint", str(tone_run["run"]), "--data", str(other), "--out", str(tmp_path / "E"),
                 "--num-workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and default_space.id[:16] in err and changed.id[:16] in err, err
    assert not (tmp_path / "E" / "report.json").exists()
