"""The audio plan a user follows past Clotho and AudioCaps, end to end on one small mixed set: WavCaps
(FLAC and an AudioSet `.wav` id), MusicCaps (a whole-video m4a with its window, a cut opus clip, a 0-byte
failed download) and Song Describer (the `.2min.mp3` excerpts), three manifests tokenized into one OUT by
`uti tokenize` and checked by `uti verify` with every sample decoded and re-encoded."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli_helpers import uti_in_process
from media_writers import m4a, opus
from verify_helpers import ray_address  # noqa: F401 - a fixture, imported by name

SR = 16000


def tone(path: Path, seconds: float, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * 330 * t), SR, format=fmt)
    return path


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig", newline="") as fh:  # a BOM, as spreadsheet exports leave it
        csv.writer(fh).writerows(rows)


def make_wavcaps(root: Path) -> None:
    (root / "json_files" / "FreeSound").mkdir(parents=True)
    (root / "json_files" / "AudioSet_SL").mkdir(parents=True)
    (root / "json_files" / "FreeSound" / "fsd_final.json").write_text(json.dumps({"num_captions_per_audio": 1, "data": [
        {"id": "180913", "caption": "Rain falls on a roof.", "description": "recorded on my porch", "duration": 0.8,
         "audio": "wav_path", "download_link": "https://example.invalid/180913"}]}))
    (root / "json_files" / "AudioSet_SL" / "as_final.json").write_text(json.dumps([  # the older bare list
        {"id": "Y7fmOlUlwoNg.wav", "caption": "A dog barks twice.", "duration": 0.6, "audio": "wav_path"}]))
    tone(root / "audio" / "FreeSound" / "180913.flac", 0.8, "FLAC")
    tone(root / "audio" / "AudioSet_SL" / "Y7fmOlUlwoNg.flac", 0.6, "FLAC")


def make_musiccaps(root: Path) -> None:
    header = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
              "is_balanced_subset", "is_audioset_eval"]
    write_csv(root / "musiccaps-public.csv", [
        header,
        ["video", "2", "3.5", "/m/04rlf", "['piano', 'slow']", "A slow piano.", "1", "False", "False"],
        ["cut", "30", "31", "/m/0l14md", "['drums']", "Drums.", "2", "True", "True"],
        ["died", "0", "10", "", "[]", "Never downloaded.", "3", "False", "False"],
    ])
    (root / "audio").mkdir()
    m4a(root / "audio" / "video.m4a", 5.0, channels=1, rate=24000)  # the whole video: only 2..3.5 s is used
    opus(root / "audio" / "cut.opus", 1.0)  # already cut to its clip: taken whole
    (root / "audio" / "died.webm").write_bytes(b"")


def make_song_describer(root: Path) -> None:
    header = ["caption_id", "track_id", "caption", "is_valid_subset", "familiarity", "artist_id", "album_id", "path",
              "duration"]
    write_csv(root / "song_describer.csv", [
        header,
        ["7", "1051", "An upbeat pop song,\nwith a hook.", "True", "1", "a1", "b1", "51/1051.mp3", "120"],
        ["3", "1051", "Bright synth pop.", "True", "0", "a1", "b1", "51/1051.mp3", "120"],
    ])
    tone(root / "audio" / "51" / "1051.2min.mp3", 0.9, "MP3")


def test_wavcaps_musiccaps_song_describer_tokenize_and_verify_together(tmp_path, ray_address):
    for name, make in (("wavcaps", make_wavcaps), ("musiccaps", make_musiccaps),
                       ("song_describer", make_song_describer)):
        make(tmp_path / name)
        done = uti_in_process("manifest", "--dataset", name, "--root", str(tmp_path / name),
                              "--out", str(tmp_path / f"{name}.jsonl"))
        assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "musiccaps.summary.json").read_text())
    assert summary["by_extension"] == {".m4a": 1, ".opus": 1}
    assert [(r["item"], r["reason"]) for r in summary["rejected"]["rows"]] == [("musiccaps:died", "empty file, 0 bytes")]

    out = tmp_path / "out"
    manifests = [a for name in ("wavcaps", "musiccaps", "song_describer")
                 for a in ("--manifest", str(tmp_path / f"{name}.jsonl"))]
    done = uti_in_process("tokenize", *manifests, "--out", str(out), "--address", ray_address, "--num-actors", "1",
                          "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (out / "errors.jsonl").exists() or not (out / "errors.jsonl").read_text().strip()

    from sharding.reader import ShardReader
    from uti.token_space import TokenSpace

    metas = {s.meta["id"]: s.meta for s in ShardReader(str(out), expected_token_space=TokenSpace.load(out))}
    assert sorted(metas) == ["musiccaps:cut", "musiccaps:video", "song_describer:1051", "wavcaps:AudioSet_SL/Y7fmOlUlwoNg",
                             "wavcaps:FreeSound/180913"]
    assert metas["musiccaps:video"]["window"] == [2.0, 3.5] and metas["musiccaps:video"]["duration"] == 1.5
    assert metas["musiccaps:video"]["split"] == "train" and metas["musiccaps:cut"]["split"] == "eval"
    assert "window_applied" not in metas["musiccaps:cut"]  # a cut clip is taken whole
    assert metas["musiccaps:cut"]["duration"] == pytest.approx(1.0, abs=0.03)
    assert metas["song_describer:1051"]["captions"] == ["Bright synth pop.", "An upbeat pop song,\nwith a hook."]
    assert metas["song_describer:1051"]["split"] == "test"

    report = tmp_path / "report"
    done = uti_in_process("verify", str(out), "--address", ray_address, "--decode-fraction", "1",
                          "--retokenize-fraction", "1", "--loader-batches", "0", "--report-dir", str(report),
                          "--no-plots")
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads((report / "report.json").read_text())["checks"]}
    assert checks["retokenize"]["status"] == "PASS" and checks["retokenize"]["failures"] == 0
    assert checks["retokenize"]["counts"]["retokenize.audio.exact"] == 5  # m4a window, opus, flac, mp3 alike
