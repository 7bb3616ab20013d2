"""`uti audit` end to end through the real CLI (the bundle through the console script, the other commands
through its main() in this process): the bundle, exit codes, baseline gating."""

import json
import subprocess

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cli_helpers import uti_in_process as uti_here  # the bundle goes through the console script, the rest in-process
from uti.assets import synth_audio, synth_image


def uti(*args, check=False):
    return subprocess.run(["uti", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    proc = uti("audit", "--out", str(out))
    return out, proc


def test_audit_writes_a_complete_passing_bundle(bundle):
    out, proc = bundle
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("token_space.json", "token_space.sha256", "image_tokens.sha256", "audio_tokens.sha256",
                 "recon.png", "recon.wav", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    hard = {k: v for k, v in report["checks"].items() if v["hard"]}
    assert all(v["ok"] for v in hard.values())
    for name in ("determinism.audio", "determinism.image", "batch_equals_single.audio", "ranges.audio",
                 "shape.image", "decode.audio", "runtime_size_match", "token_space.roundtrip"):
        assert name in hard
    assert {"audio.snr_db", "audio.log_mel_l1", "image.psnr", "image.ssim", "audio.roundtrip_snr_db"} <= set(report["metrics"])
    assert report["token_space_id"] == (out / "token_space.sha256").read_text().split()[0]
    assert len((out / "audio_tokens.sha256").read_text().splitlines()) == 4
    assert "PASSED" in proc.stdout


def test_audit_is_reproducible_and_gates_on_its_own_baseline(bundle, tmp_path):
    out, _ = bundle
    proc = uti_here("audit", "--out", str(tmp_path), "--baseline", str(out / "report.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "audio_tokens.sha256").read_text() == (out / "audio_tokens.sha256").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["checks"]["baseline.audio.snr_db"]["ok"]


def test_audit_on_given_assets_fails_on_a_baseline_it_cannot_meet(bundle, tmp_path):
    """One audit (each costs ~10 s) for two promises: on a folder of given assets every check of its own passes,
    and a baseline it cannot meet (image.psnr 99 dB) fails it, naming the regressed metric."""
    out, _ = bundle
    assets = tmp_path / "assets"
    assets.mkdir()
    sf.write(assets / "a b, c.wav", synth_audio("tone", seconds=0.6, sample_rate=16000), 16000)
    sf.write(assets / "stereo.flac", np.stack([synth_audio("noise", seconds=0.3, sample_rate=48000)] * 2, 1), 48000)
    Image.fromarray(synth_image(size=80, seed=9)).convert("P").save(assets / "pal.png")
    base = json.loads((out / "report.json").read_text())
    base["metrics"] = {"image.psnr": 99.0}  # only this limit: the bundle's other figures are of other assets
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    proc = uti_here("audit", "--out", str(tmp_path / "out"), "--assets", str(assets), "--baseline", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "baseline.image.psnr" in proc.stdout and "REGRESSED" in proc.stdout
    assert "FAILED" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["assets"]["audio"] == ["a b, c.wav", "stereo.flac"] and report["assets"]["image"] == ["pal.png"]
    assert [n for n, c in report["checks"].items() if c["hard"] and not c["ok"]] == ["baseline.image.psnr"], \
        report["checks"]
    assert report["passed"] is False


def test_audit_user_errors_are_one_clear_line(tmp_path):
    proc = uti_here("audit", "--out", str(tmp_path), "--assets", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = uti_here("audit", "--out", str(tmp_path), "--decode-mode", "diffusion")
    assert proc.returncode == 2 and "no diffusion decoder" in proc.stderr


def test_tokenspace_build_show_diff(tmp_path, bundle):
    out, _ = bundle
    assert uti_here("tokenspace", "build", "--out", str(tmp_path / "a")).returncode == 0
    assert (tmp_path / "a" / "token_space.json").read_bytes() == (out / "token_space.json").read_bytes()
    show = uti_here("tokenspace", "show", str(tmp_path / "a"))
    assert show.returncode == 0 and "audio.l7" in show.stdout and "<boa>=" in show.stdout
    cfg = tmp_path / "seed1.yaml"
    cfg.write_text("audio: {weights: 'random:1'}\n")
    assert uti_here("tokenspace", "build", "--out", str(tmp_path / "b"), "--config", str(cfg)).returncode == 0
    d = uti_here("tokenspace", "diff", str(tmp_path / "a"), str(tmp_path / "b"))
    assert d.returncode == 1 and "codecs.audio.fingerprint" in d.stdout and "codecs.audio.weights" in d.stdout


def test_each_modality_audits_alone_to_the_bundle_figures(bundle, default_tokenizer):
    """run_audit is a sequence of per-modality audits: audio and image each give, on their own, the
    checks and metrics (same values) that the CLI's bundle reports for that modality."""
    from uti.audit import MediaAudit, audit_audio, audit_image, load_assets

    out, _ = bundle
    report = json.loads((out / "report.json").read_text())
    tok = default_tokenizer
    audio_assets, image_assets = load_assets(None, image_size=tok.image.proc_size[0])
    for modality, result in (("audio", audit_audio(tok, tok, audio_assets)), ("image", audit_image(tok, tok, image_assets))):
        assert isinstance(result, MediaAudit) and result.modality == modality
        names = [c.name for c in result.checks]
        assert names == [f"{c}.{modality}" for c in ("determinism", "batch_equals_single", "ranges", "shape", "decode",
                                                     "idempotence")]
        assert {c.name: c.to_dict() for c in result.checks} == {n: report["checks"][n] for n in names}
        assert result.metrics == pytest.approx({k: v for k, v in report["metrics"].items() if k.startswith(f"{modality}.")},
                                               rel=1e-6)
        assert sorted(result.ids) == report["assets"][modality] and len(result.previews) == len(result.ids)
