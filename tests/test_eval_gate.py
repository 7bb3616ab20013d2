"""train.evaluate.collapse and .baseline: the mix-collapse reading of a run's metrics.jsonl, and the
gate of an eval report on a baseline file. Pure: synthetic rows and reports, nothing trained."""

from __future__ import annotations

import json
import math

import pytest

from train.evaluate.baseline import (
    FORMAT, VERSION, BaselineLimits, compare, load_baseline, metrics_from, write_baseline,
)
from train.evaluate.collapse import CollapseSettings, mix_collapse, read_collapse
from train.metrics import METRICS_NAME
from uti.errors import UTIError


# ---- collapse ---------------------------------------------------------------------------------------
def step_row(step: int, **losses) -> dict:
    """A metrics.jsonl line as metrics_row writes it: every task's loss_T, None where the step had none."""
    return {"step": step, "loss": 1.0, **{f"loss_{t}": None for t in ("a2t", "t2a", "i2t", "t2i", "text")},
            **losses}


def with_evals(series: dict[str, list[float]], steps: list[int]) -> list[dict]:
    """Rows at every step 1..max(steps), eval_loss_T added at `steps` (as the trainer merges them)."""
    rows = [step_row(s, loss_a2t=3.0, loss_t2a=3.0) for s in range(1, max(steps) + 1)]
    for k, s in enumerate(steps):
        rows[s - 1].update({f"eval_loss_{t}": v[k] for t, v in series.items()}, eval_loss=1.0)
    return rows


def test_collapse_flags_a_task_rising_while_another_falls():
    rows = with_evals({"a2t": [4.0, 4.1, 4.5, 4.8], "t2a": [6.0, 5.0, 4.2, 3.9]}, [10, 20, 30, 40])
    c = mix_collapse(rows)
    assert c.source == "eval_loss" and c.note is None
    assert [f.task for f in c.flags] == ["a2t"]
    flag = c.flags[0].to_dict()
    assert flag["best"] == {"step": 10, "loss": 4.0} and flag["last"] == {"step": 40, "loss": 4.8}
    assert math.isclose(flag["rise"], 0.8) and flag["falling"] == ["t2a"]
    d = c.to_dict()
    assert set(d) == {"source", "series", "flags", "note"}
    assert d["series"]["a2t"] == [[10, 4.0], [20, 4.1], [30, 4.5], [40, 4.8]]
    json.dumps(d, allow_nan=False)


def test_collapse_not_flagged_when_all_fall_or_all_rise_or_below_min_rise():
    falling = with_evals({"a2t": [4.0, 3.9, 3.5], "t2a": [6.0, 5.0, 4.2]}, [10, 20, 30])
    assert mix_collapse(falling).flags == ()
    diverged = with_evals({"a2t": [4.0, 4.5, 5.0], "t2a": [4.0, 4.4, 4.9]}, [10, 20, 30])
    assert mix_collapse(diverged).flags == ()  # everything rose: divergence, not a mix problem
    small = with_evals({"a2t": [4.0, 4.04], "t2a": [6.0, 5.0]}, [10, 20])
    assert mix_collapse(small).flags == ()
    assert [f.task for f in mix_collapse(small, CollapseSettings(min_rise=0.01)).flags] == ["a2t"]


def test_collapse_without_evaluations_reads_the_smoothed_training_loss():
    # a2t falls to 3.0 by step 50 then climbs to 3.6; t2a falls throughout. Every other step is noisy
    # by +-0.5, which a window of 10 averages out; t2i appears once and cannot be judged.
    rows = []
    for s in range(1, 101):
        base = 4.0 - s / 50 if s <= 50 else 3.0 + (s - 50) * 0.012
        noise = -0.5 if s % 2 else 0.5
        rows.append(step_row(s, loss_a2t=base + noise, loss_t2a=5.0 - s / 50 + noise, loss_text=None))
    rows[3]["loss_t2i"] = 2.0
    c = mix_collapse(rows, CollapseSettings(window=10))
    assert c.source == "loss"
    assert "training loss" in c.note and "10 steps" in c.note and "t2i (1 point)" in c.note
    assert [f.task for f in c.flags] == ["a2t"] and c.flags[0].falling == ("t2a",)
    assert 45 <= c.flags[0].best.step <= 56 and c.flags[0].last.step == 100
    assert c.flags[0].rise == pytest.approx(0.51, abs=0.05)
    raw = [r["loss_a2t"] for r in rows]
    assert c.series["a2t"][-1].loss == pytest.approx(sum(raw[-10:]) / 10)  # the trailing mean, not the last step
    # unsmoothed (window 1) the rise is measured from a noisy dip to a noisy peak: a nat too much
    assert mix_collapse(rows, CollapseSettings(window=1)).flags[0].rise == pytest.approx(1.58, abs=0.01)


def test_collapse_single_task_and_empty_runs_say_why():
    one = with_evals({"t2a": [5.0, 5.5, 6.0]}, [10, 20, 30])
    c = mix_collapse(one)
    assert c.flags == () and "only t2a" in c.note
    empty = mix_collapse([{"step": 1, "loss": 2.0}])
    assert empty.source is None and empty.flags == () and "no per-task loss" in empty.note


def test_read_collapse_reads_a_real_metrics_file(tmp_path):
    rows = with_evals({"a2t": [4.0, 4.8], "t2a": [6.0, 5.0]}, [5, 10])
    (tmp_path / METRICS_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11, "lo')
    c = read_collapse(tmp_path)
    assert c.source == "eval_loss" and [f.task for f in c.flags] == ["a2t"] and c.flags[0].last.step == 10
    missing = read_collapse(tmp_path / "nothing")
    assert missing.flags == () and METRICS_NAME in missing.note and "nothing" in missing.note


def test_collapse_series_is_thinned_for_the_report_but_judged_on_every_point():
    rows = [step_row(s, loss_a2t=4.0 - s / 1000 + (0.6 if s == 1000 else 0), loss_t2a=5.0 - s / 1000)
            for s in range(1, 1001)]
    c = mix_collapse(rows, CollapseSettings(window=1, max_points=50))
    assert len(c.series["a2t"]) == 50 and c.series["a2t"][0].step == 1 and c.series["a2t"][-1].step == 1000
    assert [f.task for f in c.flags] == ["a2t"]


# ---- baseline ---------------------------------------------------------------------------------------
def iv(mean: float) -> dict:
    return {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "n": 12}


def report(*, loss_t2a=3.0, gap_t2a=0.6, drift=True, space="a" * 64) -> dict:
    return {
        "format": "uti.eval_report", "version": 1, "checkpoint": "/abs/RUN/checkpoints/step-000040",
        "token_space_id": space,
        "losses": {"t2a": {"mean": loss_t2a, "low": 2.9, "high": 3.3, "n_samples": 12, "n_tokens": 4000},
                   "a2t": {"mean": 2.0, "low": 1.9, "high": 2.1, "n_samples": 12, "n_tokens": 400}},
        "dependence": {"t2a": {"own": iv(3.0), "other": iv(3.6), "empty": iv(3.8), "gap": iv(gap_t2a),
                               "empty_gap": iv(0.8), "uses_prompt": True, "flag": None,
                               "retrieval": {"accuracy": 0.8, "k": 10, "chance": 0.1, "note": None}}},
        "generation": {"t2a": {"task": "t2a", "n": 16, "failure_rate": 0.0}},
        "text_regression": {"drift": iv(0.01)} if drift else None,
    }


def test_metrics_from_names_every_gated_metric():
    assert metrics_from(report()) == {
        "loss.t2a": 3.0, "loss.a2t": 2.0, "gap.t2a": 0.6, "retrieval.t2a": 0.8,
        "generation.t2a.failure_rate": 0.0, "text_regression.drift": 0.01}


def test_same_report_passes_and_the_file_holds_editable_limits(tmp_path):
    path = write_baseline(tmp_path / "b" / "base.json", report())
    data = json.loads(path.read_text())
    assert set(data) == {"format", "version", "token_space_id", "checkpoint", "metrics", "limits"}
    assert (data["format"], data["version"]) == (FORMAT, VERSION)
    assert data["limits"] == {"loss": 0.05, "gap": 0.5, "retrieval": 0.1, "generation": 0.0, "text_regression": 0.05}
    result = compare(load_baseline(path), report())
    assert result.ok and result.warnings == ()
    assert result.to_dict() == {"path": str(path.absolute()), "compared": 6, "regressions": []}


def test_worse_report_names_both_regressions_with_both_values(tmp_path):
    base = load_baseline(write_baseline(tmp_path / "base.json", report()))
    result = compare(base, report(loss_t2a=3.2, gap_t2a=0.18))  # loss up 0.2, gap down to 30%
    assert not result.ok
    regs = {r.metric: r for r in result.regressions}
    assert set(regs) == {"loss.t2a", "gap.t2a"}
    loss, gap = regs["loss.t2a"], regs["gap.t2a"]
    assert (loss.baseline, loss.current, loss.limit) == (3.0, 3.2, "rise <= 0.05 nats")
    assert "3 in the baseline, 3.2 now" in loss.detail and "limits.loss" in loss.detail
    assert (gap.baseline, gap.current) == (0.6, 0.18) and "50%" in gap.limit and "70%" in gap.detail
    section = result.to_dict()
    assert [set(r) for r in section["regressions"]] == [{"metric", "baseline", "current", "limit", "detail"}] * 2
    json.dumps(section, allow_nan=False)
    # a gap that shrank by less than half, and a loss within 0.05, pass
    assert compare(base, report(loss_t2a=3.04, gap_t2a=0.31)).ok


def test_per_metric_override_in_the_file_loosens_only_that_metric(tmp_path):
    path = write_baseline(tmp_path / "base.json", report())
    data = json.loads(path.read_text())
    data["limits"]["loss.t2a"] = 0.3
    path.write_text(json.dumps(data))
    base = load_baseline(path)
    assert base.limits.of("loss.t2a") == 0.3 and base.limits.of("loss.a2t") == 0.05
    result = compare(base, report(loss_t2a=3.2, gap_t2a=0.18))
    assert [r.metric for r in result.regressions] == ["gap.t2a"]
    worse = report(loss_t2a=3.2)
    worse["losses"]["a2t"]["mean"] = 2.2
    assert [r.metric for r in compare(base, worse).regressions] == ["loss.a2t"]


def test_baseline_gap_at_or_below_zero_is_not_gated_on_shrinking(tmp_path):
    # a share of a negative gap would turn this improvement into a "shrink" of 2600%, and of 0 divide by 0
    base = load_baseline(write_baseline(tmp_path / "base.json", report(gap_t2a=-0.02)))
    assert compare(base, report(gap_t2a=0.5)).ok
    zero = load_baseline(write_baseline(tmp_path / "zero.json", report(gap_t2a=0.0)))
    assert compare(zero, report(gap_t2a=-0.3)).ok


def test_metric_absent_now_is_a_regression_and_token_space_change_warns(tmp_path):
    base = load_baseline(write_baseline(tmp_path / "base.json", report()))
    result = compare(base, report(drift=False, space="b" * 64))
    assert [r.metric for r in result.regressions] == ["text_regression.drift"]
    reg = result.regressions[0]
    assert reg.current is None and "absent now: the eval did not measure it" in reg.detail
    assert len(result.warnings) == 1 and "aaaaaaaaaaaa" in result.warnings[0] and "bbbbbbbbbbbb" in result.warnings[0]


def test_unknown_limit_key_is_refused_naming_key_and_file(tmp_path):
    path = write_baseline(tmp_path / "base.json", report())
    written = json.loads(path.read_text())
    for bad, named in (({"losss": 0.1}, "losss"), ({"loss.t2x": 0.1}, "loss.t2x"), ({"gap": -1}, "gap")):
        data = json.loads(json.dumps(written))
        data["limits"].update(bad)
        path.write_text(json.dumps(data))
        with pytest.raises(UTIError, match=named) as exc:
            load_baseline(path)
        assert str(path) in str(exc.value)
    with pytest.raises(UTIError, match="unknown limit 'x'"):
        BaselineLimits.from_dict({"x": 1}, where="here")


@pytest.mark.parametrize("text, says", [
    (None, "does not exist; write one with"),
    ("{not json", "not readable JSON"),
    (json.dumps({"format": "uti.verify_baseline", "version": 1, "metrics": {}}), "not a uti.eval_baseline v1"),
    (json.dumps({"format": FORMAT, "version": 2, "metrics": {}}), "not a uti.eval_baseline v1"),
    (json.dumps({"format": FORMAT, "version": VERSION, "metrics": {"loss.t2a": "3.0"}}), "not a finite number"),
    (json.dumps({"format": FORMAT, "version": VERSION, "metrics": {"loss.t2a": True}}), "not a finite number"),
    ('{"format": "uti.eval_baseline", "version": 1, "metrics": {"loss.t2a": NaN}}', "not a finite number"),
    (json.dumps({"format": FORMAT, "version": VERSION, "metrics": {"speed": 1.0}}), "no known family"),
    (json.dumps({"format": FORMAT, "version": VERSION, "metrics": [1]}), "'metrics' must map"),
    (json.dumps({"format": FORMAT, "version": VERSION, "metrics": {}, "limit": {}}), "unknown key"),
])
def test_malformed_baseline_files_name_the_file(tmp_path, text, says):
    path = tmp_path / "base.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UTIError, match=says) as exc:
        load_baseline(path)
    assert str(path) in str(exc.value)
