"""`--dataset wavcaps` on files written in WavCaps' own layout: json_files/<source>/*.json, audio/<source>/<id>.flac."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli_helpers import uti_in_process
from sharding.manifest import ManifestError, build_manifest, hash_split, read_manifest, summary_path

SR = 16000
FSD = "json_files/FreeSound/fsd_final.json"
SALT = b"uti.max_rows\x00"  # the --max-rows order: pinned here, since a changed salt changes every subset


def clip(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), SR)  # format from the extension: .flac, .wav, .mp3
    return path


def write_json(root: Path, rel: str, entries: list, *, wrapper: bool = True) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"num_captions_per_audio": 1, "data": entries} if wrapper else entries
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def entry(clip_id, caption: str = "a sound", **fields) -> dict:
    return {"id": clip_id, "caption": caption, "description": f"uploader text of {clip_id}", "duration": 9.5,
            "audio": "wav_path", **fields}


def ids(build) -> list[str]:
    return [r.id for r in build.rows]


def reasons(items) -> list[tuple[str, str]]:
    return [(r.item, r.reason) for r in items]


# ----------------------------------------------------------------------------------------- the layout


def make_two_sources(root: Path) -> None:
    """FreeSound as the wrapper JSON (with bad entries), SoundBible as an older bare list."""
    write_json(root, FSD, [
        {"id": "180913", "file_name": "UK Mello.wav", "href": "https://freesound.org/s/180913/",
         "tags": ["voice", "uk"], "description": "Recorded with a Zoom H4n. CC-BY.", "author": "mello",
         "duration": 3.25, "download_link": "https://freesound.org/s/180913/download/", "caption": " A man speaks. ",
         "audio": "/mnt/fast/FreeSound/180913.flac"},
        {"id": 180914, "caption": "Rain falls.", "description": "rain on a tin roof", "duration": 2.0},
        {"id": "180915", "caption": "its audio was never downloaded", "duration": 1.0},
        {"id": "180916", "caption": "   ", "description": "a caption of spaces only"},
        "not an object",
        {"caption": "no id at all"},
    ])
    write_json(root, "json_files/SoundBible/sb_final.json", [
        {"title": "Airplane Landing Airport", "description": "Large commercial airplane landing.",
         "author": "Daniel Simion", "href": "2219-Airplane-Landing-Airport.html", "caption": "An airplane is landing.",
         "id": "2219", "duration": 14.1424375},
    ], wrapper=False)
    clip(root / "audio/FreeSound/180913.flac", 0.1)
    clip(root / "audio/FreeSound/180914.flac", 0.3)
    clip(root / "audio/SoundBible/2219.flac", 0.2)


def test_wrapper_and_bare_list_rows_rejections_and_missing_exactly(tmp_path):
    make_two_sources(tmp_path)
    build = build_manifest("wavcaps", tmp_path)
    real = tmp_path.resolve()
    got = [(r.id, r.captions, r.split, r.path, round(r.duration, 6), r.modality, r.extra) for r in build.rows]
    assert got == [
        ("wavcaps:FreeSound/180913", ("A man speaks.",), hash_split("wavcaps:FreeSound/180913"),
         str(real / "audio/FreeSound/180913.flac"), 0.1, "audio",
         {"source": "FreeSound", "description": "Recorded with a Zoom H4n. CC-BY.", "author": "mello",
          "href": "https://freesound.org/s/180913/", "tags": ["voice", "uk"], "file_name": "UK Mello.wav",
          "download_link": "https://freesound.org/s/180913/download/", "json_duration": 3.25}),
        ("wavcaps:FreeSound/180914", ("Rain falls.",), hash_split("wavcaps:FreeSound/180914"),
         str(real / "audio/FreeSound/180914.flac"), 0.3, "audio",
         {"source": "FreeSound", "description": "rain on a tin roof", "json_duration": 2.0}),
        ("wavcaps:SoundBible/2219", ("An airplane is landing.",), hash_split("wavcaps:SoundBible/2219"),
         str(real / "audio/SoundBible/2219.flac"), 0.2, "audio",
         {"source": "SoundBible", "title": "Airplane Landing Airport", "description": "Large commercial airplane "
          "landing.", "author": "Daniel Simion", "href": "2219-Airplane-Landing-Airport.html",
          "json_duration": 14.1424375}),
    ]
    assert all(r.bytes == os.stat(r.path).st_size for r in build.rows)
    # the uploader's description never becomes a caption
    assert not any("Zoom" in c or "tin roof" in c for r in build.rows for c in r.captions)
    assert reasons(build.missing) == [
        ("wavcaps:FreeSound/180915", "file not found (tried audio/FreeSound/180915.flac)")]
    assert reasons(build.rejected) == [
        ("wavcaps:FreeSound/180916", f"empty or missing 'caption' ({FSD} entry 3)"),
        (f"{FSD} entry 4", "expected an object, got str"),
        (f"{FSD} entry 5", "missing or invalid 'id' (expected a non-empty string or integer)"),
    ]


def test_audioset_wav_ids_are_stripped_for_file_and_id(tmp_path):
    write_json(tmp_path, "json_files/AudioSet_SL/as_final.json", [
        entry("Y7fmOlUlwoNg.wav", "a car passes by"), entry("YAbC-d_E.WAV", "a dog barks")])
    clip(tmp_path / "audio/AudioSet_SL/Y7fmOlUlwoNg.flac")
    clip(tmp_path / "audio/AudioSet_SL/YAbC-d_E.flac")
    build = build_manifest("wavcaps", tmp_path)
    assert ids(build) == ["wavcaps:AudioSet_SL/Y7fmOlUlwoNg", "wavcaps:AudioSet_SL/YAbC-d_E"]
    assert [Path(r.path).name for r in build.rows] == ["Y7fmOlUlwoNg.flac", "YAbC-d_E.flac"]
    assert not build.missing and not build.rejected


def test_source_folders_match_in_any_case_and_the_blacklist_folder_is_not_a_source(tmp_path):
    write_json(tmp_path, "json_files/freesound/fsd_final.json", [entry("1")])
    write_json(tmp_path, "json_files/bbc_sound_effects/bbc_final.json", [entry("07070011", category="Birds")])
    (tmp_path / "json_files/blacklist").mkdir()
    (tmp_path / "json_files/blacklist/blacklist_exclude_all_ac.json").write_text(json.dumps({"FreeSound": ["9"]}))
    clip(tmp_path / "audio/FreeSound/1.flac")
    clip(tmp_path / "audio/BBC_Sound_Effects/07070011.flac")
    build = build_manifest("wavcaps", tmp_path)
    assert ids(build) == ["wavcaps:BBC_Sound_Effects/07070011", "wavcaps:FreeSound/1"]  # canonical spelling
    assert build.rows[0].extra["category"] == "Birds" and build.rows[0].extra["source"] == "BBC_Sound_Effects"
    assert not build.rejected and not build.missing


def test_json_duration_when_the_header_gives_none(tmp_path):
    write_json(tmp_path, FSD, [entry("5", duration=7.25)])
    (tmp_path / "audio/FreeSound").mkdir(parents=True)
    (tmp_path / "audio/FreeSound/5.flac").write_bytes(b"fLaC but not really a stream")
    (row,) = build_manifest("wavcaps", tmp_path).rows
    assert row.duration == 7.25 and row.extra["json_duration"] == 7.25


# ------------------------------------------------------------------------------------------ blacklists


def test_blacklist_rejects_exactly_the_rows_it_names(tmp_path, monkeypatch):
    write_json(tmp_path, FSD, [entry(str(i)) for i in range(1, 6)])
    write_json(tmp_path, "json_files/AudioSet_SL/as_final.json", [entry("Yaaa.wav"), entry("Ybbb.wav")])
    write_json(tmp_path, "json_files/SoundBible/sb_final.json", [entry("3"), entry("4")], wrapper=False)
    for i in range(1, 6):
        clip(tmp_path / f"audio/FreeSound/{i}.flac")
    for name in ("Yaaa", "Ybbb"):
        clip(tmp_path / f"audio/AudioSet_SL/{name}.flac")
    for i in (3, 4):
        clip(tmp_path / f"audio/SoundBible/{i}.flac")
    lists = tmp_path / "json_files/blacklist"
    lists.mkdir()
    # WavCaps' own shape: keyed by source, AudioSet ids with `.wav`, FreeSound ids as strings
    wavcaps_list = {"FreeSound": ["2", "4"], "AudioSet": ["Ybbb.wav"]}
    (lists / "blacklist_exclude_all_ac.json").write_text(json.dumps(wavcaps_list))
    (lists / "mine.json").write_text(json.dumps([4, "5"]))  # a bare list: every source; 4 is named first above
    monkeypatch.chdir(tmp_path / "json_files")  # --blacklist paths are the user's: relative to the cwd
    build = build_manifest("wavcaps", tmp_path,
                           blacklist=["blacklist/blacklist_exclude_all_ac.json", str(lists / "mine.json")])
    assert ids(build) == ["wavcaps:AudioSet_SL/Yaaa", "wavcaps:FreeSound/1", "wavcaps:FreeSound/3",
                          "wavcaps:SoundBible/3"]
    assert sorted(reasons(build.rejected)) == [
        ("wavcaps:AudioSet_SL/Ybbb", "in blacklist blacklist_exclude_all_ac.json"),
        ("wavcaps:FreeSound/2", "in blacklist blacklist_exclude_all_ac.json"),
        ("wavcaps:FreeSound/4", "in blacklist blacklist_exclude_all_ac.json"),
        ("wavcaps:FreeSound/5", "in blacklist mine.json"),
        ("wavcaps:SoundBible/4", "in blacklist mine.json"),
    ]
    assert not build.missing


@pytest.mark.parametrize("content,expected", [
    ("{not json", r"bad\.json is not valid UTF-8 JSON .*expected an object \{source: \[ids\]\}"),
    ('{"Clotho": ["1"]}', r"bad\.json: key 'Clotho' is not a WavCaps source .*AudioSet"),
    ('{"FreeSound": "1"}', r"bad\.json: key 'FreeSound' must be a list of ids"),
    ('[["1"]]', r"bad\.json: the list must be a list of ids"),
    ('"1"', r"bad\.json holds a JSON str; expected an object \{source: \[ids\]\}"),
    (None, r"cannot read --blacklist .*bad\.json"),
])
def test_a_malformed_blacklist_names_the_file_and_the_shape(tmp_path, content, expected):
    write_json(tmp_path, FSD, [entry("1")])
    clip(tmp_path / "audio/FreeSound/1.flac")
    if content is not None:
        (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ManifestError, match=expected):
        build_manifest("wavcaps", tmp_path, blacklist=[str(tmp_path / "bad.json")])


# ---------------------------------------------------------------------------------- duplicates, sources


def test_duplicates_within_a_source_are_one_row_across_sources_two(tmp_path):
    write_json(tmp_path, FSD, [entry("77", "first caption"), entry("78")])
    write_json(tmp_path, "json_files/FreeSound/fsd_final_2s.json", [entry("77", "second caption")])
    write_json(tmp_path, "json_files/SoundBible/sb_final.json", [entry("77", "soundbible's 77")])
    for rel in ("FreeSound/77", "FreeSound/78", "SoundBible/77"):
        clip(tmp_path / f"audio/{rel}.flac")
    build = build_manifest("wavcaps", tmp_path)
    assert ids(build) == ["wavcaps:FreeSound/77", "wavcaps:FreeSound/78", "wavcaps:SoundBible/77"]
    assert build.rows[0].captions == ("first caption",)  # the first file in name order is kept
    split = hash_split("wavcaps:FreeSound/77")
    assert reasons(build.rejected) == [
        ("wavcaps:FreeSound/77", f"duplicate canonical ID (also in split {split!r}); kept the first")]


def test_sources_picks_in_any_case_and_names_what_is_wrong(tmp_path):
    make_two_sources(tmp_path)
    assert ids(build_manifest("wavcaps", tmp_path, sources=["soundbible"])) == ["wavcaps:SoundBible/2219"]
    both = build_manifest("wavcaps", tmp_path, sources=["SOUNDBIBLE", "FreeSound"])
    assert len(both.rows) == 3
    with pytest.raises(ManifestError, match=r"'Clotho' is not a WavCaps source; known sources: FreeSound, "
                                            r"BBC_Sound_Effects, SoundBible, AudioSet_SL"):
        build_manifest("wavcaps", tmp_path, sources=["FreeSound", "Clotho"])
    with pytest.raises(ManifestError, match=r"AudioSet_SL has no JSON folder: expected .*json_files/AudioSet_SL/"):
        build_manifest("wavcaps", tmp_path, sources=["audioset_sl"])


def test_layout_and_json_errors_name_the_file_and_the_shape(tmp_path):
    with pytest.raises(ManifestError, match=r"no json_files/ folder in .*point --root at the WavCaps folder"):
        build_manifest("wavcaps", tmp_path)
    (tmp_path / "json_files/FreeSound").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"json_files/FreeSound holds no \*\.json"):
        build_manifest("wavcaps", tmp_path)
    bad = tmp_path / FSD
    for content, expected in [
        ("{\"data\": [", r"fsd_final\.json is not valid UTF-8 JSON .*expected \{\"num_captions_per_audio\": 1"),
        ('{"num_captions_per_audio": 1, "items": []}', r"fsd_final\.json holds an object without a 'data' list; "
                                                       r"expected .*or a bare list"),
        ("42", r"fsd_final\.json holds a JSON int; expected"),
    ]:
        bad.write_text(content)
        with pytest.raises(ManifestError, match=expected):
            build_manifest("wavcaps", tmp_path)
    with pytest.raises(ManifestError, match=r"\{youtube_id\}"):
        build_manifest("wavcaps", tmp_path, audio_pattern="audio/{youtube_id}.flac")


# ----------------------------------------------------------------------------------------- --max-rows


def salted(canonical_id: str) -> bytes:
    return hashlib.sha256(SALT + canonical_id.encode()).digest()


def make_many(root: Path, n: int, *, order: int = 0) -> list[str]:
    """n FreeSound clips (one real FLAC, hard-linked), split over two JSONs in an order set by `order`."""
    names = [str(100000 + i) for i in range(n)]
    random.Random(order).shuffle(names)
    half = len(names) // 2
    write_json(root, FSD, [entry(i) for i in names[:half]])
    write_json(root, "json_files/FreeSound/more.json", [entry(i) for i in names[half:]], wrapper=order % 2 == 0)
    first = clip(root / "audio/FreeSound/seed.flac")
    for name in names:
        os.link(first, root / f"audio/FreeSound/{name}.flac")
    return [f"wavcaps:FreeSound/{i}" for i in names]


def test_max_rows_keeps_the_smallest_salted_hashes_nested_and_order_independent(tmp_path):
    all_ids = make_many(tmp_path / "a", 80)
    by_key = sorted(all_ids, key=salted)
    subsets = {n: ids(build_manifest("wavcaps", tmp_path / "a", max_rows=n)) for n in (10, 20, 80, 500)}
    for n, got in subsets.items():
        assert got == sorted(by_key[:n])  # exactly these rows
    assert set(subsets[10]) < set(subsets[20])  # nested: tokenize 10, then grow to 20
    # other file and row order, another JSON shape for the second file: the same subset
    make_many(tmp_path / "b", 80, order=1)
    assert ids(build_manifest("wavcaps", tmp_path / "b", max_rows=10)) == subsets[10]

    # rows added: a row of the old subset stays unless displaced by a row with a smaller key
    more = [entry(str(900000 + i)) for i in range(40)]
    write_json(tmp_path / "a", "json_files/FreeSound/added.json", more)
    for e in more:
        os.link(tmp_path / "a/audio/FreeSound/seed.flac", tmp_path / f"a/audio/FreeSound/{e['id']}.flac")
    grown = ids(build_manifest("wavcaps", tmp_path / "a", max_rows=10))
    union = sorted(all_ids + [f"wavcaps:FreeSound/{e['id']}" for e in more], key=salted)
    assert grown == sorted(union[:10])
    threshold = salted(max(grown, key=salted))
    assert all(i in grown for i in subsets[10] if salted(i) <= threshold)


def test_max_rows_counts_what_it_leaves_out_and_skips_rejected_rows(tmp_path):
    all_ids = make_many(tmp_path, 30)
    by_key = sorted(all_ids, key=salted)
    # the first row in subset order is a 0-byte download and the second is missing: neither takes a place
    empty, gone = by_key[0].split("/")[1], by_key[1].split("/")[1]
    (tmp_path / f"audio/FreeSound/{empty}.flac").unlink()
    (tmp_path / f"audio/FreeSound/{empty}.flac").write_bytes(b"")
    (tmp_path / f"audio/FreeSound/{gone}.flac").unlink()
    # a repeat of a row in the subset is rejected as a duplicate, and does not take a place either
    repeated = by_key[2]
    write_json(tmp_path, "json_files/FreeSound/zz_repeat.json", [entry(repeated.split("/")[1], "again")])
    build = build_manifest("wavcaps", tmp_path, max_rows=5)
    assert ids(build) == sorted(by_key[2:7])
    split = hash_split(repeated)
    assert reasons(build.rejected) == [
        (by_key[0], "empty file, 0 bytes"),
        (repeated, f"duplicate canonical ID (also in split {split!r}); kept the first")]
    assert [m.item for m in build.missing] == [by_key[1]]
    summary = build.summary()
    assert summary["subset"] == {"max_rows": 5, "of": 29, "left_out": 23}  # 29 found, 6 taken (one rejected)
    assert summary["rows"] == 5 and summary["rejected"]["count"] == 2
    assert "subset" not in build_manifest("wavcaps", tmp_path).summary()  # no --max-rows, no key


def test_max_rows_is_spread_over_the_splits_and_counts_within_the_requested_ones(tmp_path):
    all_ids = make_many(tmp_path, 100)
    halves = {"train": 0.5, "val": 0.5}
    # the unsalted SHA-256 orders IDs by their hash split: its 20 smallest are all train
    assert {hash_split(i, halves) for i in sorted(all_ids, key=lambda i: hashlib.sha256(i.encode()).digest())[:20]} \
        == {"train"}
    build = build_manifest("wavcaps", tmp_path, max_rows=20, split_fractions=halves)
    assert {r.split for r in build.rows} == {"train", "val"}
    val_ids = [i for i in all_ids if hash_split(i, halves) == "val"]
    only_val = build_manifest("wavcaps", tmp_path, max_rows=7, split_fractions=halves, splits=["val"])
    assert ids(only_val) == sorted(sorted(val_ids, key=salted)[:7])
    assert only_val.summary()["subset"] == {"max_rows": 7, "of": len(val_ids), "left_out": len(val_ids) - 7}


@pytest.mark.parametrize("bad", [0, -3, True, "10"])
def test_max_rows_below_one_is_an_error(tmp_path, bad):
    make_two_sources(tmp_path)
    with pytest.raises(ManifestError, match=r"--max-rows .* must be a whole number >= 1"):
        build_manifest("wavcaps", tmp_path, max_rows=bad)


# ------------------------------------------------------------------------------------ patterns, the CLI


def test_any_extension_pattern_over_mixed_downloads_gives_one_row_per_clip(tmp_path):
    write_json(tmp_path, FSD, [entry("1"), entry("2"), entry("3"), entry("4")])
    folder = tmp_path / "waveforms/FreeSound_flac"
    clip(folder / "1.flac")
    clip(folder / "2.mp3")
    clip(folder / "3.flac")
    clip(folder / "3.mp3")  # both formats of one clip: the lossless one is taken
    build = build_manifest("wavcaps", tmp_path, audio_pattern="waveforms/{source}_flac/{id}.*")
    assert [(r.id, Path(r.path).name) for r in build.rows] == [
        ("wavcaps:FreeSound/1", "1.flac"), ("wavcaps:FreeSound/2", "2.mp3"), ("wavcaps:FreeSound/3", "3.flac")]
    assert reasons(build.missing) == [
        ("wavcaps:FreeSound/4", "file not found (tried waveforms/FreeSound_flac/4.*)")]
    assert build.by_extension() == {".flac": 2, ".mp3": 1}


def test_cli_prints_the_subset_rejections_and_missing(tmp_path, monkeypatch):
    all_ids = make_many(tmp_path, 12)
    write_json(tmp_path, "json_files/SoundBible/sb_final.json", [entry("1")])  # left out by --sources
    by_key = sorted(all_ids, key=salted)
    listed, gone = by_key[0].split("/")[1], by_key[1].split("/")[1]
    (tmp_path / f"audio/FreeSound/{gone}.flac").unlink()
    (tmp_path / "bl.json").write_text(json.dumps({"FreeSound": [listed]}))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out/wavcaps.jsonl"
    res = uti_in_process("manifest", "--dataset", "wavcaps", "--root", str(tmp_path), "--out", str(out),
                         "--sources", "freesound", "--blacklist", "bl.json", "--max-rows", "4",
                         "--split-fractions", "train=1")
    assert res.returncode == 0, res.stderr
    summary_file = summary_path(out)
    assert res.stdout.splitlines()[1:] == [
        "  train: 4 audio",
        "  files: 4 .flac",
        "  subset: --max-rows 4 of 10 rows (6 left out, chosen by canonical-ID hash)",
        f"  missing files: 1 (listed in {summary_file})",
        f"  rejected: 1 (listed in {summary_file}), e.g. {by_key[0]}: in blacklist bl.json",
    ]
    assert [r.id for r in read_manifest(out)] == sorted(by_key[2:6])
    on_disk = json.loads(summary_file.read_text())
    assert on_disk["subset"] == {"max_rows": 4, "of": 10, "left_out": 6}
    assert on_disk["options"]["max_rows"] == 4 and on_disk["options"]["sources"] == ["freesound"]
