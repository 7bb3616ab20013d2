"""A tiny smoke run of each benchmark script: they run and produce their ratios (numbers meaningless)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_benchmarks_run_on_tiny_inputs(tmp_path):
    from bench.run import main

    out = tmp_path / "results.json"
    assert main(["--quick", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    payload = json.loads(out.read_text())
    assert payload["quick"] is True
    for name in ("b/a (steady state vs codec limit)", "b/c (end to end vs HF datasets.map)",
                 "b/d (end to end vs Ray Data, 1 actor each)", "verify MB/s per core (structural checks)",
                 "train input tokens/s / model tokens/s", "image b/a (steady state vs codec limit)"):
        assert payload["ratios"][name] > 0
    assert payload["results"]["tokenize"]["b_uti_1_actor"]["units"] > 0
