"""train/evaluate/report: report.json round-trips, report.html embeds the decoded files and shows every
section (or why it did not run), escapes what it shows, and renders in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from train.evaluate import report as rep


def _iv(mean: float, half: float = 0.1, n: int = 12) -> dict:
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def _generation(task: str, files: list[dict]) -> dict:
    return {
        "task": task, "n": len(files), "failure_rate": 0.0, "failures": [],
        "check_failures": [f"{files[0]['sample_id']}: 3 frames shorter than the data's shortest"],
        "length": {"quantiles": [0, 0.1, 0.5, 0.9, 1], "generated": [10.0, 12.0, 20.0, 30.0, 31.0],
                   "data": [11.0, 13.0, 21.0, 29.0, 33.0], "generated_mean": 20.5, "data_mean": 21.5},
        "diversity": {"distinct_per_level": [120, 80], "codebook_per_level": [1024, 1024], "ngram": 4,
                      "repeated_ngram_share": [0.0, 0.1], "mean_repeated_ngram_share": 0.05},
        "files": files,
        "memorization": {"settings": {"run_fraction": 0.5, "min_run": 8, "max_train": 2000, "seed": 0},
                         "n_train": 100,
                         "nearest": [{"label": files[0]["sample_id"], "n_tokens": 320, "run": 300, "run_share": 0.94,
                                      "run_sample_id": "train-7", "jaccard": 0.9, "jaccard_sample_id": "train-7",
                                      "memorized": True}],
                         "memorized": [{"generation": files[0]["sample_id"], "training_sample": "train-7",
                                        "run": 300, "run_share": 0.94}]}}


@pytest.fixture()
def media(tmp_path):
    """A tiny real WAV and PNG where a generation run puts them (EVAL/generated/)."""
    gen = tmp_path / "generated"
    gen.mkdir()
    sf.write(gen / "t2a-000.wav", (0.1 * np.sin(np.arange(800) / 5.0)).astype(np.float32), 8000)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(gen / "t2i-000.png")
    return tmp_path


def _report(np_scalars: bool = False) -> dict:
    loss = np.float32(3.25) if np_scalars else 3.25
    return {
        "format": rep.REPORT_FORMAT, "version": rep.REPORT_VERSION,
        "checkpoint": "/abs/RUN/checkpoints/step-000040", "run": "/abs/RUN", "step": 40,
        "token_space_id": "ab" * 32, "data": ["/abs/OUT"], "split": "validation",
        "num_workers": 2, "seed": 0, "seconds": 12.3, "ok": False,
        "checks": [{"name": "dependence.t2a", "verdict": "PASS", "hard": True, "detail": "gap 0.80 [0.70, 0.90]"},
                   {"name": "dependence.t2i", "verdict": "FAIL", "hard": True,
                    "detail": "gap 0.01 [-0.02, 0.04]: the model ignores its prompt; train longer"},
                   {"name": "memorization.t2a", "verdict": "WARN", "hard": False, "detail": "1 generation copies"}],
        "skipped": {"text_regression": "no --base-model given"},
        "losses": {"t2a": {"mean": loss, "low": 2.9, "high": 3.4, "n_samples": 12, "n_tokens": 4000},
                   "t2i": {"mean": 4.1, "low": 3.9, "high": 4.3, "n_samples": 12, "n_tokens": 3000}},
        "dependence": {
            "t2a": {"own": _iv(3.1), "other": _iv(3.9), "empty": _iv(4.0), "gap": _iv(0.8), "empty_gap": _iv(0.9),
                    "uses_prompt": True, "flag": None,
                    "retrieval": {"accuracy": 0.8, "k": 10, "chance": 0.1, "note": None}},
            "t2i": {"own": _iv(4.1), "other": _iv(4.11), "empty": _iv(4.12), "gap": _iv(0.01, 0.03),
                    "empty_gap": _iv(0.02), "uses_prompt": False, "flag": "IGNORES PROMPT: gap within noise",
                    "retrieval": {"accuracy": 0.1, "k": 10, "chance": 0.1, "note": "only 10 samples"}}},
        "generation": {
            "t2a": _generation("t2a", [{"sample_id": "aud-1", "caption": "a low hum <script>alert(1)</script>",
                                        "seed": 0, "n_frames": 40, "path": "generated/t2a-000.wav"}]),
            "t2i": _generation("t2i", [{"sample_id": "img-1", "caption": "a red square", "seed": 0,
                                        "n_frames": 16, "path": "generated/t2i-000.png"},
                                       {"sample_id": "img-2", "caption": "gone", "seed": 1, "n_frames": 16,
                                        "path": "generated/t2i-001.png"}])},
        "text_regression": None,
        "collapse": {"source": "eval_loss", "series": {"t2a": [[10, 4.2], [20, 4.5], [40, 4.9]],
                                                       "t2i": [[10, 5.0], [20, 4.6], [40, 4.1]]},
                     "flags": [{"task": "t2a", "best": {"step": 10, "loss": 4.2}, "last": {"step": 40, "loss": 4.9},
                                "rise": 0.7, "falling": ["t2i"]}], "note": "eval_loss every 10 steps"},
        "baseline": {"path": "/abs/base.json", "compared": 9,
                     "regressions": [{"metric": "loss.t2a", "baseline": 3.0, "current": 3.4,
                                      "limit": "rise <= 0.1 nats", "detail": "loss.t2a rose 0.40 nats"}]},
    }


def _data_uris(page: str, mime: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(rf'src="data:{re.escape(mime)};base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_json_round_trips_numpy_values(tmp_path):
    report = _report(np_scalars=True)
    report["losses"]["t2i"]["series"] = np.arange(3)
    path = rep.write_json(report, tmp_path)
    assert path == tmp_path / "report.json" and not (tmp_path / "report.json.tmp").exists()
    back = json.loads(path.read_text())
    assert back["losses"]["t2a"]["mean"] == pytest.approx(3.25) and back["losses"]["t2i"]["series"] == [0, 1, 2]
    expected = _report()
    expected["losses"]["t2i"]["series"] = [0, 1, 2]
    assert back == expected
    assert list(back) == sorted(back)


def test_html_embeds_media_shows_every_section_and_escapes(media):
    report = _report()
    path = rep.write_html(report, media)
    page = path.read_text(encoding="utf-8")
    assert path == media / "report.html" and not (media / "report.html.tmp").exists()
    assert (media / "generated" / "t2a-000.wav").read_bytes() in _data_uris(page, "audio/wav")
    assert (media / "generated" / "t2i-000.png").read_bytes() in _data_uris(page, "image/png")
    assert "<audio controls" in page
    assert "missing: generated/t2i-001.png" in page  # the report names a file that is not there
    assert re.search(r"<h1>uti eval: <span[^>]*>FAIL</span>", page)
    for _, title in rep.SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "not run: no --base-model given" in page
    assert "IGNORES PROMPT: gap within noise" in page and "class='flag'>IGNORES PROMPT" in page
    assert "<script>" not in page and "a low hum &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "train-7" in page and "loss.t2a rose 0.40 nats" in page and "rise &lt;= 0.1 nats" in page
    # plots: losses, gaps, collapse (three PNGs beside the one decoded image)
    assert len(_data_uris(page, "image/png")) == 4


def test_absent_sections_say_why_and_media_are_capped(tmp_path):
    report = _report()
    del report["baseline"]
    report["collapse"] = None
    report["skipped"]["collapse"] = "no metrics.jsonl in /abs/RUN"
    files = [{"sample_id": f"s{i}", "caption": "c", "seed": i, "n_frames": 1, "path": f"generated/x-{i}.wav"}
             for i in range(rep.MAX_MEDIA_PER_TASK + 3)]
    report["generation"]["t2a"]["files"] = files
    report["generation"]["t2i"]["files"].append({"sample_id": "img-3", "caption": "c", "seed": 2, "n_frames": 0,
                                                 "path": None})
    report["generation"]["t2i"]["failures"] = [{"sample_id": "img-3", "caption": "c", "error": "no end-of-image"}]
    page = rep.render_html(report, tmp_path, with_plots=False)
    assert "no file (decoding failed)" in page and "<td>no end-of-image</td>" in page
    assert "not run: no data" in page  # baseline: absent and no reason given
    assert "not run: no metrics.jsonl in /abs/RUN" in page
    assert page.count("missing: generated/x-") == rep.MAX_MEDIA_PER_TASK
    assert "3 more files not embedded" in page
    assert "data:image/png" not in page  # with_plots=False and every media file missing


def test_summary_names_each_check_and_the_failing_one(tmp_path):
    text = rep.format_summary(_report(), tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("PASS  dependence.t2a") and "gap 0.80" in lines[0]
    assert lines[1].startswith("FAIL  dependence.t2i") and "ignores its prompt" in lines[1]
    assert lines[-1].startswith("FAIL: dependence.t2i")
    assert "memorization.t2a" not in lines[-1]  # soft: a warning, not a failed gate
    assert str(tmp_path / "report.json") in lines[-1] and str(tmp_path / "report.html") in lines[-1]
    passing = {**_report(), "ok": True}
    assert rep.format_summary(passing).splitlines()[-1] == "PASS: every hard check passed"


def test_report_renders_in_headless_chromium(media):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium when apt is available)")
    page = rep.write_html(_report(), media)
    shot = media / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={media / 'profile'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colors = img.resize((120, 240)).getcolors(maxcolors=1 << 16)
    assert colors is not None and len(colors) > 50, "the page rendered as a near-blank image"
