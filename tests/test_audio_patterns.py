"""Audio file-name patterns with any extension (`.*`) or a list (`.{flac,mp3}`), on a folder of mixed
downloads as yt-dlp leaves them; 0-byte files rejected at manifest time; the summary's extension counts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sharding.datasets.patterns import ANY_AUDIO_PREFERENCE, MediaFinder, parse_pattern
from sharding.manifest import ManifestError, build_manifest, make_manifest

SR = 16000
HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]
# libsndfile's containers for each extension (real files: the duration hint comes from their headers)
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
           "opus": ("OGG", "OPUS"), "ogg": ("OGG", "VORBIS")}


def audio(path: Path, seconds: float = 0.5) -> Path:
    fmt, subtype = FORMATS[path.suffix[1:]]
    rate = 48000 if subtype == "OPUS" else SR
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format=fmt, subtype=subtype)
    return path


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """AudioCaps train: clips downloaded in whatever format YouTube served, one clip in two formats, one
    empty (a failed download), one absent, and a stray non-audio file with a clip's stem."""
    write_csv(tmp_path / "train.csv", [HEADER] + [[str(i), v, "30", f"clip {v}"] for i, v in
                                                  enumerate(["a", "b", "c", "d", "e", "f"], start=1)])
    audio(tmp_path / "audio" / "a_30.flac")
    audio(tmp_path / "audio" / "b_30.mp3")
    audio(tmp_path / "audio" / "c_30.opus")
    audio(tmp_path / "audio" / "d_30.mp3")
    audio(tmp_path / "audio" / "d_30.wav")  # two formats: .* prefers the lossless one
    (tmp_path / "audio" / "e_30.m4a").write_bytes(b"")  # 0 bytes: yt-dlp died mid-download
    (tmp_path / "audio" / "f_30.part").write_bytes(b"partial")  # not an audio extension: f is missing
    (tmp_path / "audio" / "a_30.txt").write_text("notes")
    return tmp_path


def test_any_extension_gives_one_row_per_clip(mixed):
    build = build_manifest("audiocaps", mixed, audio_pattern="{youtube_id}_{start_time}.*")
    got = {r.id: os.path.basename(r.path) for r in build.rows}
    assert got == {"audiocaps:a_30": "a_30.flac", "audiocaps:b_30": "b_30.mp3", "audiocaps:c_30": "c_30.opus",
                   "audiocaps:d_30": "d_30.wav"}
    assert [(m.item, m.reason) for m in build.missing] == [
        ("audiocaps:f_30", "file not found (tried train/f_30.*, audio/f_30.*)")]
    assert [(r.item, r.reason) for r in build.rejected] == [("audiocaps:e_30", "empty file, 0 bytes")]
    assert all(r.duration == pytest.approx(0.5, abs=0.08) for r in build.rows)  # from each container's header
    assert build.summary()["by_extension"] == {".flac": 1, ".mp3": 1, ".opus": 1, ".wav": 1}


def test_an_extension_list_is_a_preference_order(mixed):
    build = build_manifest("audiocaps", mixed, audio_pattern="{youtube_id}_{start_time}.{mp3, opus}")
    assert {r.id: os.path.basename(r.path) for r in build.rows} == {
        "audiocaps:b_30": "b_30.mp3", "audiocaps:c_30": "c_30.opus", "audiocaps:d_30": "d_30.mp3"}
    assert sorted(m.item for m in build.missing) == ["audiocaps:a_30", "audiocaps:e_30", "audiocaps:f_30"]
    assert build.missing[0].reason.endswith(".{mp3,opus})")


def test_a_fixed_extension_still_means_that_file_only(mixed):
    build = build_manifest("audiocaps", mixed, audio_pattern="{youtube_id}_{start_time}.flac")
    assert [r.id for r in build.rows] == ["audiocaps:a_30"]
    assert len(build.missing) == 5 and build.rejected == []


def test_split_folder_is_searched_before_audio(mixed):
    audio(mixed / "train" / "b_30.ogg")
    build = build_manifest("audiocaps", mixed, audio_pattern="{youtube_id}_{start_time}.*")
    assert {r.id: r.path for r in build.rows}["audiocaps:b_30"] == str((mixed / "train" / "b_30.ogg").resolve())


def test_empty_file_with_a_fixed_name_is_rejected_not_unreadable(tmp_path):
    write_csv(tmp_path / "train.csv", [HEADER, ["1", "v", "0", "x"], ["2", "w", "0", "y"]])
    audio(tmp_path / "audio" / "v_0.wav")
    (tmp_path / "audio" / "w_0.wav").write_bytes(b"")
    build = build_manifest("audiocaps", tmp_path)
    assert [r.id for r in build.rows] == ["audiocaps:v_0"]
    assert [(r.item, r.reason, os.path.basename(r.path)) for r in build.rejected] == [
        ("audiocaps:w_0", "empty file, 0 bytes", "w_0.wav")]


def test_any_extension_stays_inside_the_root(mixed, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    audio(outside / "b_30.flac")
    (mixed / "train").mkdir()
    os.symlink(outside / "b_30.flac", mixed / "train" / "b_30.flac")  # the split folder is searched first
    build = build_manifest("audiocaps", mixed, audio_pattern="{youtube_id}_{start_time}.*")
    (bad,) = [r for r in build.rejected if r.item == "audiocaps:b_30"]
    assert "outside the dataset root" in bad.reason and "--follow-symlinks" in bad.reason
    followed = build_manifest("audiocaps", mixed, audio_pattern="{youtube_id}_{start_time}.*", follow_symlinks=True)
    assert {r.id: os.path.basename(r.path) for r in followed.rows}["audiocaps:b_30"] == "b_30.flac"


def test_cli_summary_counts_extensions(mixed, capsys):
    from uti.cli import main

    out = mixed / "m.jsonl"
    assert main(["manifest", "--dataset", "audiocaps", "--root", str(mixed), "--out", str(out),
                 "--audio-pattern", "{youtube_id}_{start_time}.*"]) == 0
    printed = capsys.readouterr().out
    assert "files: 1 .flac, 1 .mp3, 1 .opus, 1 .wav" in printed
    assert "rejected: 1" in printed and "empty file, 0 bytes" in printed
    summary = json.loads((mixed / "m.summary.json").read_text())
    assert summary["by_extension"] == {".flac": 1, ".mp3": 1, ".opus": 1, ".wav": 1}
    assert summary["options"] == {"audio_pattern": "{youtube_id}_{start_time}.*"}


@pytest.mark.parametrize("pattern, message", [
    ("{video}.*", r"\{video\}"),
    ("{youtube_id}.{start_time:05}", r"\{start_time:05\}"),
    ("audio/{youtube_id}/", "must end in a file name"),
    ("plain.wav", "got none"),
])
def test_bad_patterns_are_refused_before_any_file_is_read(tmp_path, pattern, message):
    write_csv(tmp_path / "train.csv", [HEADER, ["1", "v", "0", "x"]])
    with pytest.raises(ManifestError, match=message):
        build_manifest("audiocaps", tmp_path, audio_pattern=pattern)


def test_pattern_parsing_and_one_listing_per_folder(tmp_path):
    p = parse_pattern("clips/{id}.*", placeholders=("id",), example="{id}.wav")
    assert (p.template, p.extensions) == ("clips/{id}", ANY_AUDIO_PREFERENCE)
    assert parse_pattern("{id}.{FLAC,mp3,flac}", placeholders=("id",), example="").extensions == ("flac", "mp3")
    assert parse_pattern("{id}.wav", placeholders=("id",), example="").extensions == ()
    audio(tmp_path / "clips" / "x.flac")
    audio(tmp_path / "clips" / "y.mp3")
    os.rename(tmp_path / "clips" / "y.mp3", tmp_path / "clips" / "y.MP3")  # extensions match in any case
    finder = MediaFinder(tmp_path)
    found, problem = finder.locate(p, [""], [{"id": "x"}], item="t:x")
    assert problem is None and found.name == "x.flac"
    assert finder.locate(p, [""], [{"id": "y"}], item="t:y")[0].name == "y.MP3"
    (tmp_path / "clips" / "z.wav").write_bytes(b"RIFF")  # added after the listing: not seen by this finder
    assert finder.locate(p, [""], [{"id": "z"}], item="t:z")[1].missing
    assert len(finder._listings) == 1
    assert MediaFinder(tmp_path).locate(p, [""], [{"id": "z"}], item="t:z")[0].name == "z.wav"


def test_make_manifest_writes_rows_of_mixed_extensions(mixed):
    summary = make_manifest("audiocaps", mixed, mixed / "out.jsonl", audio_pattern="{youtube_id}_{start_time}.*")
    assert summary["rows"] == 4 and summary["rejected"]["count"] == 1 and summary["missing"]["count"] == 1


def test_a_folder_named_like_a_clip_is_not_the_clip(tmp_path):
    (tmp_path / "clips" / "3.flac").mkdir(parents=True)
    audio(tmp_path / "clips" / "3.mp3")
    p = parse_pattern("clips/{id}.*", placeholders=("id",), example="")
    assert MediaFinder(tmp_path).locate(p, [""], [{"id": "3"}], item="t:3")[0].name == "3.mp3"
    one = parse_pattern("clips/{id}.{mp3}", placeholders=("id",), example="")  # a list of one extension
    assert one.extensions == ("mp3",) and MediaFinder(tmp_path).locate(one, [""], [{"id": "3"}], item="t:3")[0]
    assert parse_pattern("clips/x.{id}", placeholders=("id",), example="").extensions == ()  # a placeholder
