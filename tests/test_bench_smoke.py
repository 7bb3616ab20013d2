"""A tiny smoke run of each benchmark script: they run and produce their ratios (numbers meaningless)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_benchmarks_run_on_tiny_inputs(tmp_path, ray_session):
    """On the session's Ray (a smoke run measures nothing a Ray start would change): every benchmark uses the
    caller's instance and leaves it running."""
    from bench.run import main

    out = tmp_path / "results.json"
    # Sections written by the other benchmark scripts (bench_tokenize's all-cores run, bench_codecs) survive.
    out.write_text(json.dumps({"results": {"tokenize_all_cores": {"ratio": 0.88}}, "codecs": {"results": [1]},
                               "ratios": {"end to end / bare codec, all cores": 0.88}}))
    assert main(["--quick", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    payload = json.loads(out.read_text())
    assert payload["results"]["tokenize_all_cores"] == {"ratio": 0.88} and payload["codecs"] == {"results": [1]}
    assert payload["ratios"]["end to end / bare codec, all cores"] == 0.88
    assert payload["quick"] is True
    for name in ("b/a (steady state vs codec limit)", "b/c (end to end vs HF datasets.map)",
                 "b/d (end to end vs Ray Data, 1 actor each)", "verify MB/s per core (structural checks)",
                 "train input tokens/s / model tokens/s", "image b/a (steady state vs codec limit)"):
        assert payload["ratios"][name] > 0
    assert payload["results"]["tokenize"]["b_uti_1_actor"]["units"] > 0
    assert ray_session.is_initialized(), "a benchmark shut down a Ray it did not start"


def test_verdicts_know_which_way_a_target_points():
    from bench.results import verdict

    assert verdict("end to end / bare codec, all cores", 0.88).endswith("met")
    assert verdict("end to end / bare codec, all cores", 0.5).endswith("MISSED")
    assert verdict("start-up seconds at 600k rows", 12.0).endswith("met")  # lower is better
    assert verdict("start-up seconds at 600k rows", 16.4).endswith("MISSED")
    assert verdict("a measurement without a target", 3.0) == ""
