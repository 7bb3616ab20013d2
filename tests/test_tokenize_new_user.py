"""`uti tokenize` as a new user meets it: SIGTERM, runs that produce nothing, limits no sample can
meet, a source JSONL given as a manifest, a rerun with nothing to do, per-modality rates, --help defaults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tokenize_helpers import shard_bytes, wait_for
from uti.cli import main as cli_main


@pytest.fixture(scope="module")
def manifests(tokenize_manifests):
    return tokenize_manifests


@pytest.fixture(scope="module")
def reference(reference_run):
    """A clean run, one sample per shard (13 shards: room to interrupt a run between two of them); the
    session's (tests/conftest.py), shared with test_tokenize.py."""
    return reference_run(1)


def _tokenize_cmd(manifests, out: Path) -> list[str]:
    cmd = ["uti", "tokenize", "--out", str(out), "--shard-samples", "1", "--num-actors", "1", "--no-progress"]
    for m in manifests:
        cmd += ["--manifest", m]
    return cmd


def _session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (Ray's local processes share the session of the `uti` that started them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.ray
def test_sigterm_stops_like_ctrl_c_and_the_rerun_is_byte_identical(reference, manifests, ray_session, tmp_path,
                                                                  capsys):
    """SIGTERM mid-run: exit 143 with one line saying how to resume, no Ray stack dump, no shard without
    its index, no process of the run left; rerunning the same command gives the clean run's bytes (the
    rerun goes through the same CLI entry point in this process, on the suite's Ray; the interrupted run
    is the one that starts and stops a Ray of its own)."""
    ref, _ = reference
    out = tmp_path / "out"
    cmd = _tokenize_cmd(manifests, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: (out / "shards").exists() and any((out / "shards").rglob("shard-*.json")), timeout=300,
                 what="the first committed shard index")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "uti tokenize: interrupted; rerun the same command to resume", stderr
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr and "Aborted" not in stderr, stderr
    wait_for(lambda: not _session_members(proc.pid), timeout=30, what="the run's Ray processes to exit with it")
    tars = {p.with_suffix("") for p in (out / "shards").rglob("shard-*.tar")}
    indexes = {p.with_suffix("") for p in (out / "shards").rglob("shard-*.json")}
    assert tars == indexes and 1 <= len(indexes) < 13, (tars, indexes)  # temp files have other names
    assert not (out / "job.json").exists()

    assert cli_main(cmd[1:]) == 0, capsys.readouterr().err
    assert shard_bytes(out) == shard_bytes(ref)
    assert (out / "errors.jsonl").read_bytes() == (ref / "errors.jsonl").read_bytes()
    job = json.loads((out / "job.json").read_text())
    assert job["counts"]["shards"]["skipped_complete"] == len(indexes)


@pytest.mark.ray
def test_rerun_of_a_complete_out_starts_no_ray(reference, manifests, tmp_path):
    """Nothing to do: it says so, leaves job.json (the summary of the run that did the work) alone, and
    never starts Ray (RAY_TMPDIR stays empty)."""
    ref, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    before = (out / "job.json").read_bytes()
    ray_tmp = Path(tempfile.mkdtemp(prefix="uti-r-"))  # short: Ray's socket paths must fit 107 bytes
    try:
        proc = subprocess.run(_tokenize_cmd(manifests, out), capture_output=True, text=True, timeout=600,
                              env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"nothing to do: all 13 shards complete at {out} (10 samples, 3 errors)"), proc.stdout
        assert "audio s/s" not in proc.stdout and "actors busy" not in proc.stdout
        assert list(ray_tmp.iterdir()) == [], "Ray was started for a run with nothing to do"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert (out / "job.json").read_bytes() == before
    assert shard_bytes(out) == shard_bytes(ref)


@pytest.mark.ray
def test_rates_are_over_the_time_their_modality_was_encoded(reference):
    """images/s divides by the span in which image shards were encoded, not by the whole job's time."""
    _, job = reference
    t = job["throughput"]
    assert t["images"] == 4 and 0 < t["image_span_seconds"] < t["processing_seconds"]
    assert t["images_per_second"] == pytest.approx(4 / t["image_span_seconds"])
    assert 0 < t["audio_span_seconds"] <= t["processing_seconds"]
    assert t["audio_seconds_per_second"] == pytest.approx(t["audio_seconds"] / t["audio_span_seconds"])


@pytest.mark.ray
def test_a_run_that_tokenizes_nothing_fails_naming_errors_jsonl_and_the_reasons(ray_session, manifests, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = Path(manifests[0]).read_text().splitlines(keepends=True)
    bad.write_text("".join(line for line in lines if '"clotho:corrupt.wav"' in line or '"clotho:nan.wav"' in line))
    out = tmp_path / "out"
    code = cli_main(["tokenize", "--manifest", str(bad), "--out", str(out), "--no-progress", "--num-actors", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no sample was tokenized: all 2 rows failed" in err and f"{out}/errors.jsonl" in err, err
    assert "unreadable (1)" in err and "nan_or_inf (1)" in err, err
    assert len((out / "errors.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "job.json").read_text())["counts"]["samples"] == 0


@pytest.mark.parametrize("limits, named", [
    ("{max_audio_seconds: -1}", "limits.max_audio_seconds"),
    ("{max_image_pixels: 0}", "limits.max_image_pixels"),
    ("{max_audio_seconds: .nan}", "limits.max_audio_seconds"),
    ("{min_sample_rate: 48000, max_sample_rate: 44100}", "limits.min_sample_rate"),
])
def test_limits_no_sample_can_meet_are_a_config_error(manifests, tmp_path, capsys, limits, named):
    config = tmp_path / "uti.yaml"
    config.write_text(f"text: {{kind: byte}}\naudio: {{kind: encodec}}\nlimits: {limits}\n")
    out = tmp_path / "out"
    code = cli_main(["tokenize", "--manifest", manifests[0], "--out", str(out), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err, err
    assert not out.exists()  # refused before any work


def test_high_sample_rate_recordings_are_accepted_by_default(tmp_path):
    """352.8 and 384 kHz masters are good audio (a 192 kHz limit would refuse them)."""
    from sharding.manifest import ManifestRow
    from sharding.media import AudioSpec, load_audio
    from uti.config import LimitsConfig

    for rate in (352800, 384000):
        path = tmp_path / f"{rate}.wav"
        t = np.arange(rate // 20) / rate
        sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
        row = ManifestRow(id=f"hi:{rate}", dataset="hi", modality="audio", path=str(path), split="train")
        media = load_audio(row, spec=AudioSpec(sample_rate=24000, channels=1), limits=LimitsConfig())
        assert media.info["source_sample_rate"] == rate and media.data.shape[-1] == 1200


def test_a_source_jsonl_given_as_manifest_says_how_to_make_one(tmp_path, capsys):
    source = tmp_path / "my.jsonl"
    source.write_text(json.dumps({"id": "a", "modality": "audio", "path": "a.wav", "captions": ["a dog"]}) + "\n")
    code = cli_main(["tokenize", "--manifest", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{source} line 1: not a uti manifest" in err and "'dataset'" in err, err
    assert f"uti manifest --dataset jsonl --root DIR --file {source} --name NAME" in err, err
    assert "__init__" not in err and not (tmp_path / "out").exists()


def test_help_shows_every_default(capsys):
    """Defaults are shown by one formatter for every `uti` command, nested ones included."""
    import argparse

    from uti.cli import HelpFormatter, build_parser

    for argv, expected in ((["tokenize", "--help"], ("default: max(60, 30 x the audio encode batch)", "(default: 3)")),
                           (["generate", "--help"], ("(default: 1.0)",))):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert exc.value.code == 0
        for want in expected:
            assert want in text, (argv, want, text)
        assert "(default: None)" not in text and "(default: False)" not in text
    # --num-actors has no fixed default: it is fitted to the cluster, and the help says how.
    assert "--num-actors NUM_ACTORS codec actors; default: one per GPU" in " ".join(_help(build_parser(), "tokenize").split())

    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    found = list(parsers(build_parser()))
    assert len(found) > 10 and all(issubclass(p.formatter_class, HelpFormatter) for p in found)


def _help(parser, command: str) -> str:
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_sigterm_handler_is_restored_after_an_in_process_run(tmp_path, capsys):
    """main() called in-process (tests, notebooks) leaves the process's SIGTERM handler as it found it."""
    before = signal.getsignal(signal.SIGTERM)
    cli_main(["tokenize", "--manifest", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    capsys.readouterr()
    assert signal.getsignal(signal.SIGTERM) is before
