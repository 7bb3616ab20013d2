"""MusicCaps and Song Describer adapters on files written in their real layouts (WAV/FLAC/MP3 by libsndfile)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli_helpers import uti_in_process
from sharding.datasets.musiccaps import parse_aspect_list
from sharding.datasets.song_describer import audio_candidates
from sharding.manifest import ManifestError, build_manifest, hash_split, read_manifest

SR = 8000
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3"}


def audio(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * 330 * t), SR, format=FORMATS[path.suffix])
    return path


def write_csv(path: Path, rows: list[list[str]], *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(rows)
    return path


def rejections(build) -> list[tuple[str, str]]:
    return [(r.item, r.reason) for r in build.rejected]


# ------------------------------------------------------------------------------------------------ MusicCaps

MC_HEADER = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
             "is_balanced_subset", "is_audioset_eval"]


def make_musiccaps(root: Path) -> Path:
    """whole: a 14 s video with window 4..8; cut: a 4.5 s clip of 30..34 (already cut); mixed: .mp3 and .flac
    of one clip (.flac preferred); lossy: only an .mp3; gone: no file; two bad time rows."""
    audio(root / "audio" / "whole.wav", 14.0)
    audio(root / "audio" / "cut.flac", 4.5)
    audio(root / "audio" / "mixed.mp3", 3.0)
    audio(root / "audio" / "mixed.flac", 3.0)
    audio(root / "audio" / "lossy.mp3", 2.0)
    write_csv(root / "musiccaps-public.csv", [
        MC_HEADER,
        ["whole", "4", "8", "/m/0140xf,/m/02cjck", "['low quality', 'sustained strings melody']",
         "A string ensemble, recorded badly.", "4", "False", "False"],
        ["cut", "30", "34", "/m/04rlf", '["children\'s music", \'piano\']', "A piano, gently.", "7", "TRUE", "True"],
        ["mixed", "0", "3.0", "", "not a list", "Drums.", "1", "0", "1"],
        ["lossy", "10.5", "12.5", "", "[]", "A flute.", "2", "false", "FALSE"],
        ["gone", "0", "10", "", "[]", "Taken down.", "3", "False", "False"],
        ["badtime", "ten", "20", "", "[]", "x", "3", "False", "False"],
        ["backwards", "20", "10", "", "[]", "x", "3", "False", "False"],
        ["badflag", "0", "10", "", "[]", "x", "3", "False", "maybe"],
    ])
    return root


def test_musiccaps_rows_splits_windows_and_rejections(tmp_path):
    root = make_musiccaps(tmp_path / "mc")
    build = build_manifest("musiccaps", root)
    rows = {r.key: r for r in build.rows}
    assert sorted(rows) == ["cut", "lossy", "mixed", "whole"]
    whole = rows["whole"]
    # the whole video: only the window is tokenized, and the hint is its length, not the file's 14 s
    assert whole.to_dict() == {
        "id": "musiccaps:whole", "dataset": "musiccaps", "modality": "audio",
        "path": str((root / "audio" / "whole.wav").resolve()), "captions": ["A string ensemble, recorded badly."],
        "split": "train", "duration": 4.0, "bytes": (root / "audio" / "whole.wav").stat().st_size,
        "extra": {"ytid": "whole", "start_s": 4.0, "end_s": 8.0, "window": [4.0, 8.0],
                  "aspect_list": ["low quality", "sustained strings melody"],
                  "audioset_positive_labels": ["/m/0140xf", "/m/02cjck"], "author_id": "4",
                  "is_balanced_subset": False}}
    cut = rows["cut"]  # already the clip: no window, the header's own length
    assert cut.split == "eval" and "window" not in cut.extra and cut.duration == pytest.approx(4.5)
    assert cut.extra["aspect_list"] == ["children's music", "piano"] and cut.extra["is_balanced_subset"] is True
    assert rows["mixed"].path.endswith("mixed.flac") and rows["mixed"].split == "eval"
    # a clip from 0 s is also its video's start: the window is recorded and covers the whole 3 s file
    assert rows["mixed"].extra["window"] == [0.0, 3.0] and rows["mixed"].duration == 3.0
    assert rows["mixed"].extra["aspect_list"] == "not a list" and rows["mixed"].extra["audioset_positive_labels"] == []
    assert rows["lossy"].path.endswith("lossy.mp3") and rows["lossy"].split == "train"
    assert "window" not in rows["lossy"].extra and rows["lossy"].duration == pytest.approx(2.0, abs=0.1)
    assert [(m.item, m.reason) for m in build.missing] == [("musiccaps:gone", "file not found (tried audio/gone.*)")]
    assert rejections(build) == [
        ("musiccaps:badtime", "musiccaps-public.csv line 7: start_s 'ten' is not a number of seconds"),
        ("musiccaps:backwards", "musiccaps-public.csv line 8: end_s 10 must be after start_s 20"),
        ("musiccaps:badflag", "musiccaps-public.csv line 9: is_audioset_eval 'maybe' is not True/False (or 1/0)"),
    ]
    assert build.empty_splits() == [] and build.by_extension() == {".flac": 2, ".mp3": 1, ".wav": 1}
    assert [r.key for r in build_manifest("musiccaps", root, splits=["eval"]).rows] == ["cut", "mixed"]
    with pytest.raises(ManifestError, match="has no split.*'test'.*train, eval"):
        build_manifest("musiccaps", root, splits=["test"])


def test_musiccaps_cut_clip_pattern_and_times_as_written(tmp_path):
    root = tmp_path / "mc"
    audio(root / "audio" / "vid_30-40.wav", 10.0)  # named from `30`, the CSV writes 30.0
    audio(root / "audio" / "vid2_1.5-11.5.wav", 10.0)
    write_csv(root / "musiccaps-public.csv", [
        MC_HEADER,
        ["vid", "30.0", "40.0", "", "[]", "Cut clip.", "1", "False", "False"],
        ["vid2", "1.5", "11.5", "", "[]", "Another.", "1", "False", "False"],
    ])
    build = build_manifest("musiccaps", root, audio_pattern="{ytid}_{start_s}-{end_s}.wav")
    assert [(r.key, Path(r.path).name, r.duration, "window" in r.extra) for r in build.rows] == [
        ("vid", "vid_30-40.wav", 10.0, False), ("vid2", "vid2_1.5-11.5.wav", 10.0, False)]
    with pytest.raises(ManifestError, match="placeholders must be among"):
        build_manifest("musiccaps", root, audio_pattern="{youtube_id}.wav")


def test_parse_aspect_list_never_evaluates():
    assert parse_aspect_list("['a', \"b's\"]") == ["a", "b's"]
    for raw in ["__import__('os').system('true')", "[1, 2]", "['a'", "x" * 20, "[" + "'a'," * 5000 + "]"]:
        assert parse_aspect_list(raw) == raw


def test_musiccaps_cli_summary(tmp_path):
    root = make_musiccaps(tmp_path / "mc")
    out = tmp_path / "mc.jsonl"
    res = uti_in_process("manifest", "--dataset", "musiccaps", "--root", str(root), "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"manifest: 4 rows -> {out} (sha256 ")
    assert lines[1:5] == ["  eval: 2 audio", "  train: 2 audio", "  files: 2 .flac, 1 .mp3, 1 .wav",
                          "  missing files: 1 (listed in " + str(out.with_suffix(".summary.json")) + ")"]
    assert lines[5].startswith("  rejected: 3 (listed in ") and lines[5].endswith(
        "e.g. musiccaps:badtime: musiccaps-public.csv line 7: start_s 'ten' is not a number of seconds")
    assert [r.extra.get("window") for r in read_manifest(out)] == [None, None, [0.0, 3.0], [4.0, 8.0]]


# ------------------------------------------------------------------------------------------- Song Describer

SD_HEADER = ["caption_id", "track_id", "caption", "is_valid_subset", "familiarity", "artist_id", "album_id",
             "path", "duration", "extra_column"]


def make_song_describer(root: Path, *, bom: bool = True) -> Path:
    """Track 1051000: three captions out of order (one with a quoted newline), one not in the valid subset;
    track 22: one caption, excerpt missing but the full mp3 present; track 7: one invalid caption only;
    track 99: no audio at all; track 5: a caption naming another path."""
    audio(root / "audio" / "00" / "1051000.2min.mp3", 2.0)
    audio(root / "audio" / "22" / "22.mp3", 1.0)
    audio(root / "audio" / "07" / "7.2min.mp3", 1.0)
    audio(root / "audio" / "05" / "5.2min.mp3", 1.0)
    write_csv(root / "song_describer.csv", [
        SD_HEADER,
        ["12", "1051000", "Upbeat pop,\nwith a catchy hook.", "True", "2", "a1", "b1", "00/1051000.mp3", "231.5", "x"],
        ["3", "1051000", "A bright pop song.", "True", "0", "a1", "b1", "00/1051000.mp3", "231.5", "x"],
        ["110", "1051000", "Synths and drums.", "False", "", "a1", "b1", "00/1051000.mp3", "231.5", "x"],
        ["40", "22", "Solo guitar.", "true", "1", "a2", "b2", "22/22.mp3", "n/a", ""],
        ["41", "7", "Noise.", "False", "1", "a3", "b3", "07/7.mp3", "60", ""],
        ["42", "99", "Gone.", "True", "1", "a4", "b4", "99/99.mp3", "60", ""],
        ["50", "5", "Piano.", "True", "1", "a5", "b5", "05/5.mp3", "60", ""],
        ["51", "5", "Wrong file.", "True", "1", "a5", "b5", "06/6.mp3", "60", ""],
        ["xx", "5", "Bad id.", "True", "1", "a5", "b5", "05/5.mp3", "60", ""],
        ["60", "5", "Bad flag.", "yes", "1", "a5", "b5", "05/5.mp3", "60", ""],
        ["3", "8", "Repeated id.", "True", "1", "a5", "b5", "08/8.mp3", "60", ""],
    ], bom=bom)
    return root


def test_song_describer_rows_mapping_and_rejections(tmp_path):
    root = make_song_describer(tmp_path / "sd")
    build = build_manifest("song_describer", root)
    rows = {r.key: r for r in build.rows}
    assert sorted(rows) == ["1051000", "22", "5", "7"]
    track = rows["1051000"]
    assert track.to_dict() == {
        "id": "song_describer:1051000", "dataset": "song_describer", "modality": "audio",
        "path": str((root / "audio" / "00" / "1051000.2min.mp3").resolve()),
        "captions": ["A bright pop song.", "Upbeat pop,\nwith a catchy hook.", "Synths and drums."],
        "split": "test", "duration": track.duration, "bytes": (root / "audio/00/1051000.2min.mp3").stat().st_size,
        "extra": {"caption_ids": [3, 12, 110], "is_valid_subset": [True, True, False], "familiarity": [0, 2, None],
                  "artist_id": "a1", "album_id": "b1", "path": "00/1051000.mp3", "csv_duration": 231.5}}
    assert track.duration == pytest.approx(2.0, abs=0.1)
    assert rows["22"].path.endswith("audio/22/22.mp3") and rows["22"].extra["csv_duration"] is None
    assert rows["5"].captions == ("Piano.",) and rows["5"].extra["caption_ids"] == [50]
    assert {r.split for r in build.rows} == {"test"} and build.empty_splits() == []
    assert [(m.item, m.reason) for m in build.missing] == [
        ("song_describer:99", "file not found (tried audio/99/99.2min.mp3, audio/99/99.mp3)")]
    assert rejections(build) == [
        ("song_describer:5", "song_describer.csv line 11: caption_id 'xx' is not an integer"),
        ("song_describer:5", "song_describer.csv line 12: caption_id 60: is_valid_subset 'yes' is not True/False "
                             "(or 1/0)"),
        ("song_describer:8", "song_describer.csv line 13: caption_id 3 repeats song_describer.csv line 4; kept the "
                             "first"),
        ("song_describer:5", "song_describer.csv line 10: caption_id 51 names path '06/6.mp3' but the track's first "
                             "caption (caption_id 50) names '05/5.mp3'; fix the CSV"),
    ]
    # the quoted newline of the first caption moves every later line: caption_id 3 is on line 4
    assert build_manifest("song_describer", root, splits=["test"]).rows == build.rows


def test_song_describer_without_bom_reads_the_same(tmp_path):
    with_bom = build_manifest("song_describer", make_song_describer(tmp_path / "a", bom=True))
    plain = build_manifest("song_describer", make_song_describer(tmp_path / "b", bom=False))
    assert (tmp_path / "a" / "song_describer.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert [(r.key, r.captions, r.extra) for r in with_bom.rows] == [(r.key, r.captions, r.extra) for r in plain.rows]


def test_song_describer_valid_subset(tmp_path):
    root = make_song_describer(tmp_path / "sd")
    build = build_manifest("song_describer", root, valid_subset=True)
    rows = {r.key: r for r in build.rows}
    assert sorted(rows) == ["1051000", "22", "5"]  # track 7 has no valid caption: left out, not rejected
    assert rows["1051000"].captions == ("A bright pop song.", "Upbeat pop,\nwith a catchy hook.")
    assert rows["1051000"].extra["caption_ids"] == [3, 12]
    assert not any("song_describer:7" in r.item for r in [*build.rejected, *build.missing])


def test_song_describer_split_fractions_hash_split(tmp_path):
    root = make_song_describer(tmp_path / "sd")
    fractions = {"train": 0.5, "test": 0.5}
    build = build_manifest("song_describer", root, split_fractions=fractions)
    assert {r.id: r.split for r in build.rows} == {r.id: hash_split(r.id, fractions) for r in build.rows}
    assert {r.split for r in build.rows} == {"train", "test"}  # both occur for these four IDs
    with pytest.raises(ManifestError, match="no split.*'val'.*its splits are test .an evaluation set"):
        build_manifest("song_describer", root, splits=["val"])
    with pytest.raises(ManifestError, match="no split.*'val'.*its splits are train, test$"):
        build_manifest("song_describer", root, splits=["val"], split_fractions=fractions)


def test_song_describer_audio_candidates():
    assert audio_candidates("00/1051000.mp3") == ["audio/00/1051000.2min.mp3", "audio/00/1051000.mp3"]
    assert audio_candidates("00/1051000.2min.mp3") == ["audio/00/1051000.2min.mp3"]


def test_song_describer_cli_summary(tmp_path):
    root = make_song_describer(tmp_path / "sd")
    out = tmp_path / "sd.jsonl"
    res = uti_in_process("manifest", "--dataset", "song_describer", "--root", str(root), "--out", str(out),
                         "--valid-subset")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"manifest: 3 rows -> {out} (sha256 ")
    assert lines[1:4] == ["  test: 3 audio", "  files: 3 .mp3",
                          "  missing files: 1 (listed in " + str(out.with_suffix(".summary.json")) + ")"]
    assert lines[4].startswith("  rejected: 4 ") and "warning" not in res.stdout
    assert [r.key for r in read_manifest(out)] == ["1051000", "22", "5"]


# ------------------------------------------------------------------------------------------------ tokenize


@pytest.mark.ray
def test_a_windowed_musiccaps_row_tokenizes_only_its_window(tmp_path, ray_session, default_tokenizer):
    """The 14 s video of window 4..8 gives the tokens of those 4 s (the same as encoding that slice
    directly); the 4.5 s pre-cut clip is taken whole."""
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize
    from sharding.manifest import make_manifest
    from sharding.reader import ShardReader
    from uti.token_space import TokenSpace

    root = tmp_path / "mc"
    video = audio(root / "audio" / "whole.wav", 14.0)
    audio(root / "audio" / "cut.flac", 4.5)
    write_csv(root / "musiccaps-public.csv", [
        MC_HEADER,
        ["whole", "4", "8", "", "[]", "Strings.", "1", "False", "False"],
        ["cut", "30", "34", "", "[]", "Piano.", "1", "False", "True"],
    ])
    manifest = tmp_path / "mc.jsonl"
    make_manifest("musiccaps", root, manifest)
    out = tmp_path / "tok"
    run_tokenize(TokenizeConfig(manifests=(str(manifest),), out=str(out), shard_samples=4, num_actors=1,
                                progress=False))
    space = TokenSpace.load(out)
    samples = {s.meta["id"]: s for s in ShardReader(str(out), expected_token_space=space)}
    whole, cut = samples["musiccaps:whole"], samples["musiccaps:cut"]
    rate = whole.meta["sample_rate"]
    assert whole.meta["n_samples"] == 4 * rate and whole.meta["window"] == [4.0, 8.0]
    assert cut.meta["n_samples"] == int(4.5 * rate) and cut.meta.get("window") is None
    data, sr = sf.read(video, dtype="float32", always_2d=True)
    ids, _ = default_tokenizer.encode_audio(default_tokenizer.prepare_audio(data[4 * sr:8 * sr].T, sr))
    assert np.array_equal(ids, whole.tokens)
