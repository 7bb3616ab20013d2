"""`uti demo --quick` end to end through the real CLI, and what a person looks at: report.html, loss.png."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    proc = subprocess.run(["uti", "demo", "--quick", "--no-progress", "--out", str(out)], capture_output=True, text=True)
    return out, proc


def test_demo_runs_every_stage_and_says_where_things_are(demo):
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == [
        "synthesize sample data", "uti manifest", "uti tokenize", "uti verify", "uti train", "uti generate", "uti eval",
        "total"]
    assert summary["verify"]["ok"] is True
    assert summary["train"]["last_loss"] < summary["train"]["first_loss"]
    for line in ("tokenized dataset", "verify report", "training run", "generated"):
        assert line in proc.stdout
    assert re.search(r"uti tokenize\s+\d+\.\d", proc.stdout), "each stage's time is printed"
    import soundfile as sf

    info = sf.info(str(out / "generated" / "audio.wav"))
    # at least half a second: a model trained as briefly as --quick's can end the clip after its first frame
    assert info.samplerate == 24000 and info.frames >= 12000
    assert Image.open(out / "generated" / "image.png").size == (64, 64)


def test_demo_evaluates_its_model_and_prints_the_conditioning_gap(demo):
    out, proc = demo
    summary = json.loads((out / "demo.json").read_text())
    gap = summary["eval"]["gaps"]["t2a"]
    assert gap["low"] <= gap["mean"] <= gap["high"] and gap["n"] >= 2
    assert re.search(r"t2a conditioning gap [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", proc.stdout)
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["ok"] == summary["eval"]["ok"] and report["generation"]["t2a"]["failure_rate"] == 0
    assert "evaluation" in proc.stdout and (out / "eval" / "report.html").is_file()


def test_verify_report_embeds_its_plots(demo):
    out, _ = demo
    html = (out / "tokenized" / "verify" / "report.html").read_text()
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 3
    for data in images:
        img = Image.open(__import__("io").BytesIO(base64.b64decode(data)))
        assert img.size[0] > 100 and img.size[1] > 100


def test_loss_plot_is_a_real_image(demo):
    out, _ = demo
    img = Image.open(out / "run" / "loss.png")
    assert img.size[0] > 200 and img.size[1] > 150
    assert len(set(img.convert("L").getdata())) > 10, "an empty canvas has no curve"


def test_report_renders_in_headless_chromium(demo, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium when apt is available)")
    out, _ = demo
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", (out / "tokenized" / "verify" / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colors = img.resize((120, 240)).getcolors(maxcolors=1 << 16)
    assert colors is not None and len(colors) > 50, "the page rendered as a near-blank image"
