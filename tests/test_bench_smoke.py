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


def test_gpu_benchmark_smoke_runs_on_a_cpu(tmp_path, ray_session):
    """bench_gpu's CPU smoke (no CUDA here): the bare loop at two encode batches per family in the smoke set, and
    `uti tokenize` end to end on the session's Ray; its section lands under "gpu" and keeps the others."""
    from bench.bench_gpu import GPU_SECTION, main

    out = tmp_path / "results.json"
    out.write_text(json.dumps({"results": {"tokenize": {"kept": 1}}, "ratios": {"kept ratio": 2.0}}))
    assert main(["--smoke", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    payload = json.loads(out.read_text())
    assert payload["results"]["tokenize"] == {"kept": 1} and payload["ratios"]["kept ratio"] == 2.0
    gpu = payload[GPU_SECTION]
    assert gpu["smoke"] is True
    families = {r["family"] for r in gpu["bare"]}
    assert {"encodec_24khz", "mimi", "vqgan"} <= families
    for r in gpu["bare"]:
        assert r["rate"] > 0 and r["passes"] >= 1 and 0 < r["forward_seconds"] <= r["seconds"] * 1.01
        # encode_batch 1: one item per pass, no dummies; encode_batch 2: passes of two, a dummy where a bucket is odd
        assert (r["dummies"] == 0) if r["batch"] == 1 else (r["passes"] * 2 - r["dummies"] >= r["passes"])
    for modality in ("audio", "image"):
        run = gpu["end_to_end"][modality]
        assert run["units"] > 0 and run["steady_rate"] > 0
        assert 0 < run["forward_busy_fraction"] <= 1
        assert f"gpu: {modality} end to end (steady) / best bare batched loop" in gpu["ratios"]
    assert all(v == "smoke run" for v in gpu["verdicts"].values())
    assert ray_session.is_initialized()
