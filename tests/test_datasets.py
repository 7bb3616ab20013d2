"""Dataset adapters, manifest rows/files, path confinement and hash splits, on real-format fixtures."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from sharding.datasets import dataset_names, get_dataset
from sharding.manifest import (
    ManifestError,
    ManifestRow,
    build_manifest,
    hash_split,
    make_manifest,
    manifest_sha256,
    manifests_sha256,
    parse_split_fractions,
    read_manifest,
    read_manifests,
    summary_path,
    write_manifest,
)
from sharding.paths import PathEscapeError, resolve_inside

SR = 16000
TRICKY = 'Bäckerei, "früh" morning.wav'


def wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), SR)
    return path


def wav_bytes(seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(SR * seconds)), SR, format="WAV")
    return buf.getvalue()


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def write_csv(path: Path, rows: list[list[str]], *, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\r\n" if crlf else "\n").writerows(rows)
    return path


CLOTHO_HEADER = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]


# ------------------------------------------------------------------------------------ path confinement


def test_resolve_inside_accepts_inside_and_rejects_escapes(tmp_path):
    root = tmp_path / "root"
    wav(root / "sub" / "a.wav")
    wav(tmp_path / "outside.wav")
    (root / "link_in.wav").symlink_to(root / "sub" / "a.wav")
    (root / "link_out.wav").symlink_to(tmp_path / "outside.wav")

    got = resolve_inside(root, "sub/../sub/a.wav")
    assert got == (root / "sub" / "a.wav").resolve() and got.is_absolute()
    assert resolve_inside(root, "link_in.wav") == (root / "sub" / "a.wav").resolve()
    for bad in ["../outside.wav", "sub/../../outside.wav", "link_out.wav", str(tmp_path / "outside.wav")]:
        with pytest.raises(PathEscapeError):
            resolve_inside(root, bad)
    with pytest.raises(PathEscapeError, match="absolute"):
        resolve_inside(root, str(root / "sub" / "a.wav"))
    # Absolute paths may be allowed, but they are still confined.
    assert resolve_inside(root, str(root / "sub" / "a.wav"), allow_absolute=True).is_file()
    with pytest.raises(PathEscapeError, match="outside"):
        resolve_inside(root, str(tmp_path / "outside.wav"), allow_absolute=True)


# ----------------------------------------------------------------------------------------------- clotho


def make_clotho(root: Path) -> None:
    names = [TRICKY, "plain.wav", "it's a 'quote'.wav", "日本 語.wav"]
    for n in names:
        wav(root / "development" / n)
    wav(root / "validation" / "val one.wav", seconds=0.25)
    write_csv(
        root / "clotho_captions_development.csv",
        [
            CLOTHO_HEADER,
            [TRICKY, 'A baker says "hello", then leaves.', "bread, butter", "c3", "c4", "c5"],
            ["plain.wav", "multi\nline caption", "b", "c", "d", "e"],
            ["it's a 'quote'.wav", "q1", "", " ", "q4", "q5"],
            ["日本 語.wav", "non-ascii ok", "b", "c", "d", "e"],
            ["not there.wav", "x", "x", "x", "x", "x"],
            ["too,few.wav", "only one"],
        ],
        bom=True,
        crlf=True,
    )
    write_csv(root / "clotho_captions_validation.csv", [CLOTHO_HEADER, ["val one.wav", "v1", "v2", "v3", "v4", "v5"]])


def test_clotho_tricky_names_bom_crlf(tmp_path):
    make_clotho(tmp_path)
    build = build_manifest("clotho", tmp_path)
    by_id = {r.id: r for r in build.rows}
    assert sorted(by_id) == sorted(
        ["clotho:" + n for n in [TRICKY, "plain.wav", "it's a 'quote'.wav", "日本 語.wav", "val one.wav"]]
    )
    tricky = by_id["clotho:" + TRICKY]
    assert tricky.captions == ('A baker says "hello", then leaves.', "bread, butter", "c3", "c4", "c5")
    assert tricky.split == "development" and tricky.modality == "audio"
    assert tricky.path == str((tmp_path / "development" / TRICKY).resolve())
    assert tricky.duration == pytest.approx(0.1)
    assert tricky.bytes == os.stat(tricky.path).st_size
    assert by_id["clotho:plain.wav"].captions[0] == "multi\nline caption"
    assert by_id["clotho:it's a 'quote'.wav"].captions == ("q1", "q4", "q5")  # blanks dropped
    assert by_id["clotho:val one.wav"].split == "validation"
    assert by_id["clotho:val one.wav"].duration == pytest.approx(0.25)
    assert [m.item for m in build.missing] == ["clotho:not there.wav"]
    assert len(build.rejected) == 1 and "fields" in build.rejected[0].reason and "line 8" in build.rejected[0].item


def test_clotho_split_selection(tmp_path):
    make_clotho(tmp_path)
    build = build_manifest("clotho", tmp_path, splits=["validation"])
    assert [r.id for r in build.rows] == ["clotho:val one.wav"]
    with pytest.raises(ManifestError, match="evaluation"):
        build_manifest("clotho", tmp_path, splits=["evaluation"])  # its CSV is absent
    with pytest.raises(ManifestError, match="no split"):
        build_manifest("clotho", tmp_path, splits=["train"])


def test_clotho_missing_column_names_file_and_column(tmp_path):
    header = ["file_name", "caption_1", "caption_2"]
    write_csv(tmp_path / "clotho_captions_development.csv", [header, ["a.wav", "x", "y"]])
    with pytest.raises(ManifestError) as exc:
        build_manifest("clotho", tmp_path)
    msg = str(exc.value)
    assert "clotho_captions_development.csv" in msg and "'caption_3'" in msg


def test_clotho_unreadable_audio_is_kept_with_unknown_duration(tmp_path):
    (tmp_path / "development").mkdir()
    (tmp_path / "development" / "broken.wav").write_bytes(b"not a wav at all")
    write_csv(tmp_path / "clotho_captions_development.csv", [CLOTHO_HEADER, ["broken.wav", "a", "b", "c", "d", "e"]])
    (row,) = build_manifest("clotho", tmp_path).rows
    assert row.duration is None and row.bytes == 16


# -------------------------------------------------------------------------------------------- audiocaps

AC_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


def make_audiocaps(root: Path, pattern: str = "{youtube_id}_{start_time}.wav", where: str = "split") -> None:
    def name(ytid, start, acid):
        return pattern.format(youtube_id=ytid, start_time=start, audiocap_id=acid)

    write_csv(root / "train.csv", [AC_HEADER, ["91", "-abc,d", "30", "a dog barks"], ["92", "zzz", "0", "rain"]])
    # val: five captions for one clip, rows out of order, IDs whose string order differs from numeric order.
    write_csv(
        root / "val.csv",
        [AC_HEADER]
        + [[str(a), "vidA", "10", f"cap {a}"] for a in (100, 9, 10, 1000, 11)]
        + [["5", "vidB", "20.0", 'a "quoted", caption'], ["6", "gone", "5", "missing audio"]],
    )
    base = (lambda s: root / s) if where == "split" else (lambda s: root / "audio")
    wav(base("train") / name("-abc,d", "30", 91))
    wav(base("train") / name("zzz", "0", 92))
    wav(base("val") / name("vidA", "10", 9))  # {audiocap_id} patterns: the lowest id's file
    wav(base("val") / name("vidB", "20", 5))


@pytest.mark.parametrize(
    "pattern,where",
    [("{youtube_id}_{start_time}.wav", "split"), ("Y{youtube_id}.wav", "audio"), ("{audiocap_id}.wav", "split")],
)
def test_audiocaps_collapse_patterns_and_missing(tmp_path, pattern, where):
    make_audiocaps(tmp_path, pattern, where)
    opts = {} if pattern.startswith("{youtube_id}_") else {"audio_pattern": pattern}
    build = build_manifest("audiocaps", tmp_path, **opts)
    by_id = {r.id: r for r in build.rows}
    assert sorted(by_id) == ["audiocaps:-abc,d_30", "audiocaps:vidA_10", "audiocaps:vidB_20", "audiocaps:zzz_0"]
    clip = by_id["audiocaps:vidA_10"]
    assert clip.split == "val"
    assert clip.captions == ("cap 9", "cap 10", "cap 11", "cap 100", "cap 1000")  # numeric audiocap_id order
    assert clip.extra["audiocap_ids"] == [9, 10, 11, 100, 1000]
    assert by_id["audiocaps:vidB_20"].captions == ('a "quoted", caption',)  # 20.0 and 20 are one clip
    assert by_id["audiocaps:zzz_0"].split == "train" and by_id["audiocaps:zzz_0"].duration == pytest.approx(0.1)
    assert [m.item for m in build.missing] == ["audiocaps:gone_5"]
    assert build.rejected == []


def test_audiocaps_bad_pattern_and_missing_column(tmp_path):
    make_audiocaps(tmp_path)
    with pytest.raises(ManifestError, match=r"\{video\}"):
        build_manifest("audiocaps", tmp_path, audio_pattern="{video}.wav")
    write_csv(tmp_path / "test.csv", [["audiocap_id", "youtube_id", "caption"], ["1", "x", "y"]])
    with pytest.raises(ManifestError, match=r"test\.csv.*'start_time'"):
        build_manifest("audiocaps", tmp_path)


# ------------------------------------------------------------------------------------------------ llava


def make_llava(root: Path, n_ok: int = 3) -> list[dict]:
    entries = []
    for i in range(n_ok):
        rel = f"{i // 2:05d}/{i:09d}.jpg"
        png(root / ("images" if i == 0 else ".") / rel)  # one image only under images/
        entries.append({
            "id": f"{i:09d}",
            "image": rel,
            "conversations": [
                {"from": "human", "value": "Describe the image.\n<image>"},
                {"from": "gpt", "value": f"a red square, number {i}"},
            ],
        })
    entries.append({"id": "nogpt", "image": "00000/000000001.jpg", "conversations": [{"from": "human", "value": "hi"}]})
    entries.append({"id": "noimage", "image": "99999/nope.jpg", "conversations": [{"from": "gpt", "value": "x"}]})
    entries.append({"id": "escape", "image": "../../etc/passwd", "conversations": [{"from": "gpt", "value": "x"}]})
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries), encoding="utf-8")
    return entries


def test_llava_rows_rejects_and_hash_splits(tmp_path):
    make_llava(tmp_path)
    build = build_manifest("llava", tmp_path, split_fractions={"train": 0.5, "val": 0.5})
    assert [r.id for r in build.rows] == ["llava:000000000", "llava:000000001", "llava:000000002"]
    row = build.rows[0]
    assert row.modality == "image" and row.captions == ("a red square, number 0",)
    assert row.path == str((tmp_path / "images" / "00000" / "000000000.jpg").resolve())
    assert row.bytes == os.stat(row.path).st_size and row.duration is None
    for r in build.rows:
        assert r.split == hash_split(r.id, {"train": 0.5, "val": 0.5})
    assert [m.item for m in build.missing] == ["llava:noimage"]
    reasons = {r.item: r.reason for r in build.rejected}
    assert "gpt" in reasons["llava:nogpt"] and "outside" in reasons["llava:escape"]


def test_llava_not_a_list(tmp_path):
    (tmp_path / "blip_laion_cc_sbu_558k.json").write_text('{"id": "x"}')
    with pytest.raises(ManifestError, match="expected a list"):
        build_manifest("llava", tmp_path)


# ------------------------------------------------------------------------------------------------ jsonl


def test_jsonl_rows_and_path_escapes(tmp_path):
    root = tmp_path / "root"
    wav(root / "a.wav")
    png(root / "img" / "b.png")
    wav(tmp_path / "secret.wav")
    (root / "link.wav").symlink_to(tmp_path / "secret.wav")
    lines = [
        {"id": "a", "modality": "audio", "path": "a.wav", "caption": "one", "captions": ["two"], "split": "train",
         "src": 7},
        {"id": "b", "modality": "image", "path": "img/b.png", "captions": ["pic"]},
        {"id": "t", "modality": "text", "caption": "just text"},
        {"id": "up", "modality": "audio", "path": "../secret.wav"},
        {"id": "abs", "modality": "audio", "path": str(tmp_path / "secret.wav")},
        {"id": "sym", "modality": "audio", "path": "link.wav"},
        {"id": "vid", "modality": "video", "path": "a.wav"},
        {"modality": "audio", "path": "a.wav"},
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = make_manifest("jsonl", root, tmp_path / "m.jsonl", name="mine")
    rows = {r.id: r for r in read_manifest(tmp_path / "m.jsonl")}
    assert sorted(rows) == ["mine:a", "mine:b", "mine:t"]
    assert rows["mine:a"].captions == ("one", "two") and rows["mine:a"].extra == {"src": 7}
    assert rows["mine:a"].split == "train" and rows["mine:a"].duration == pytest.approx(0.1)
    assert rows["mine:b"].split == hash_split("mine:b")
    assert rows["mine:t"].path is None and rows["mine:t"].modality == "text"
    rejected = {r["item"]: r["reason"] for r in summary["rejected"]["rows"]}
    assert set(rejected) == {"mine:up", "mine:abs", "mine:sym", "mine:vid", "data.jsonl line 8"}
    assert "outside" in rejected["mine:up"] and "absolute" in rejected["mine:abs"] and "outside" in rejected["mine:sym"]
    on_disk = json.loads(summary_path(tmp_path / "m.jsonl").read_text())
    assert on_disk["rejected"]["count"] == 5 and on_disk["rows"] == 3
    assert sum(n for counts in on_disk["by_split"].values() for n in counts.values()) == 3
    assert on_disk["by_modality"] == {"audio": 1, "image": 1, "text": 1}


def test_jsonl_broken_line_names_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": "a", "modality": "text", "caption": "x"}\n{"id": \n')
    with pytest.raises(ManifestError, match="line 2"):
        build_manifest("jsonl", tmp_path)


# --------------------------------------------------------------------------------------------------- hf


def test_hf_save_to_disk_binary_and_path_columns(tmp_path):
    import datasets

    root = tmp_path / "hfds"
    wav(root / "files" / "inside.wav")
    ds = datasets.Dataset.from_dict({
        "id": ["k1", "k2", "k3"],
        "audio": [wav_bytes(0.2), b"", None],
        "caption": ["embedded", "empty bytes", "nothing"],
    })
    ds.save_to_disk(str(root))
    build = build_manifest("hf", root, audio_column="audio", split_fractions={"train": 1.0})
    (row,) = build.rows
    assert row.id == "hf:k1" and row.captions == ("embedded",) and row.split == "train"
    assert row.path == str(root.resolve()) and row.duration == pytest.approx(0.2) and row.bytes == len(wav_bytes(0.2))
    assert row.extra == {"hf_source": str(root.resolve()), "hf_index": 0, "column": "audio"}
    assert sorted(r.item for r in build.rejected) == ["dataset[1]", "dataset[2]"]

    # A DatasetDict keeps its split names; string paths inside root become the row's path.
    paths_root = tmp_path / "dd"
    wav(paths_root / "clips" / "c.wav")
    png(paths_root / "clips" / "p.png")
    dd = datasets.DatasetDict({
        "test": datasets.Dataset.from_dict({"path": ["clips/c.wav", "../escape.wav"], "text": ["hi", "no"]}),
    })
    dd.save_to_disk(str(paths_root))
    build = build_manifest("hf", paths_root, audio_column="path", caption_column="text", name="mydata")
    (row,) = build.rows
    assert row.id == "mydata:clips/c.wav" and row.split == "test" and row.extra == {}
    assert row.path == str((paths_root / "clips" / "c.wav").resolve()) and row.duration == pytest.approx(0.1)
    assert "outside" in build.rejected[0].reason


def test_hf_audio_feature_autodetect_save_and_parquet(tmp_path):
    import datasets

    # Audio(decode=False) set by a cast: no torchcodec needed to build or to read it back raw.
    audio = [{"bytes": wav_bytes(0.3), "path": "/elsewhere/x.wav"}]
    ds = datasets.Dataset.from_dict({"audio": audio, "caption": ["c"]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "pq" / "data" / "train-0.parquet"))
    key = hashlib.sha256(wav_bytes(0.3)).hexdigest()[:32]  # no id column: the content names the row
    for src, ref in [("saved", {}), ("pq", {"hf_file": "data/train-0.parquet"})]:
        (row,) = build_manifest("hf", tmp_path / src).rows
        assert row.id == f"hf:{key}" and row.modality == "audio" and row.duration == pytest.approx(0.3)
        assert row.extra == {"hf_source": str((tmp_path / src).resolve()), "hf_index": 0, "column": "audio", **ref}


def test_hf_parquet_text_only_and_bad_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"id": [1, 2], "text": ["alpha", "beta"]}).to_parquet(str(tmp_path / "part-0.parquet"))
    build = build_manifest("hf", tmp_path)
    got = [(r.id, r.modality, r.captions) for r in build.rows]
    assert got == [("hf:1", "text", ("alpha",)), ("hf:2", "text", ("beta",))]
    with pytest.raises(ManifestError, match="'nope' is not a column"):
        build_manifest("hf", tmp_path, caption_column="nope")


# ----------------------------------------------------------------------------------------------- splits


def test_hash_split_is_stable_when_rows_are_added():
    fr = {"train": 0.9, "val": 0.05, "test": 0.05}
    old = {f"ds:{i}": hash_split(f"ds:{i}", fr) for i in range(2000)}
    more = {f"ds:{i}": hash_split(f"ds:{i}", fr) for i in range(4000)}
    assert all(more[k] == v for k, v in old.items())
    counts = {s: list(more.values()).count(s) for s in fr}
    assert 3450 < counts["train"] < 3750 and 120 < counts["val"] < 280 and 120 < counts["test"] < 280
    # Spelling the fractions in another order gives the same assignment.
    assert all(hash_split(k, {"test": 0.05, "val": 0.05, "train": 0.9}) == v for k, v in old.items())


def test_parse_split_fractions():
    assert parse_split_fractions("train=0.9,val=0.05,test=0.05") == {"train": 0.9, "val": 0.05, "test": 0.05}
    for bad in ["train=0.9,val=0.05", "train=x", "train", "train=1.1,val=-0.1", "a=0.5,a=0.5"]:
        with pytest.raises(ManifestError):
            parse_split_fractions(bad)


# ------------------------------------------------------------------------------------------ manifest IO


def _row(key: str, split: str = "train", **kw) -> ManifestRow:
    return ManifestRow(id=f"d:{key}", dataset="d", modality="text", path=None, captions=("c",), split=split, **kw)


def test_manifest_roundtrip_canonical_sorted(tmp_path):
    rows = [_row("b", extra={"z": 1, "a": [1, 2]}), _row("a", duration=None, bytes=5), _row("ü")]
    sha = write_manifest(tmp_path / "m.jsonl", rows)
    raw = (tmp_path / "m.jsonl").read_bytes()
    assert sha == hashlib.sha256(raw).hexdigest() == manifest_sha256(tmp_path / "m.jsonl")
    first = raw.decode("utf-8").splitlines()[0]
    assert first == (
        '{"bytes":5,"captions":["c"],"dataset":"d","duration":null,"extra":{},"id":"d:a",'
        '"modality":"text","path":null,"split":"train"}'
    )
    assert "ü" in raw.decode("utf-8")  # UTF-8, not \u escapes
    back = read_manifest(tmp_path / "m.jsonl")
    assert [r.id for r in back] == ["d:a", "d:b", "d:ü"] and back[1] == rows[0]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_read_manifest_errors_name_line_and_duplicates(tmp_path):
    good = _row("a").to_json()
    p = tmp_path / "m.jsonl"
    p.write_text(good + "\n" + good + "\n" + _row("b").to_json() + "\n" + _row("b").to_json() + "\n")
    with pytest.raises(ManifestError, match=r"duplicate.*'d:a' \(line 1 and line 2\).*'d:b'"):
        read_manifest(p)
    p.write_text(good + "\n" + good.replace('"modality":"text"', '"modality":"smell"') + "\n")
    with pytest.raises(ManifestError, match="line 2.*smell"):
        read_manifest(p)
    p.write_text(good + "\n" + good.replace('"split"', '"splitt"') + "\n")
    with pytest.raises(ManifestError, match="line 2.*splitt"):
        read_manifest(p)
    p.write_text("{nope\n")
    with pytest.raises(ManifestError, match="line 1: not valid JSON"):
        read_manifest(p)


def test_read_manifests_and_combined_hash(tmp_path):
    write_manifest(tmp_path / "1.jsonl", [_row("a")])
    write_manifest(tmp_path / "2.jsonl", [_row("b")])
    write_manifest(tmp_path / "3.jsonl", [_row("a", split="val")])
    assert [r.id for r in read_manifests([tmp_path / "1.jsonl", tmp_path / "2.jsonl"])] == ["d:a", "d:b"]
    with pytest.raises(ManifestError, match=r"'d:a'.*1\.jsonl.*3\.jsonl"):
        read_manifests([tmp_path / "1.jsonl", tmp_path / "3.jsonl"])
    h1, h2 = manifest_sha256(tmp_path / "1.jsonl"), manifest_sha256(tmp_path / "2.jsonl")
    expected = hashlib.sha256("\n".join(sorted([h1, h2])).encode()).hexdigest()
    assert manifests_sha256([tmp_path / "2.jsonl", tmp_path / "1.jsonl"]) == expected
    assert manifests_sha256([tmp_path / "1.jsonl"]) == h1


def test_registry_and_option_checks(tmp_path):
    assert dataset_names() == ["audiocaps", "clotho", "hf", "jsonl", "llava", "musiccaps", "song_describer", "wavcaps"]
    assert get_dataset("clotho").name == "clotho"
    with pytest.raises(ManifestError, match="known datasets: audiocaps"):
        get_dataset("nope")
    make_clotho(tmp_path)
    with pytest.raises(ManifestError, match="audio_pattern"):
        build_manifest("clotho", tmp_path, audio_pattern="{youtube_id}.wav")


def test_duplicate_ids_across_splits_are_reported(tmp_path):
    write_csv(tmp_path / "train.csv", [AC_HEADER, ["1", "v", "0", "a"]])
    write_csv(tmp_path / "test.csv", [AC_HEADER, ["2", "v", "0", "b"]])
    wav(tmp_path / "audio" / "v_0.wav")
    build = build_manifest("audiocaps", tmp_path)
    assert [r.id for r in build.rows] == ["audiocaps:v_0"]
    assert "duplicate" in build.rejected[0].reason


def test_empty_result_is_an_error_but_summary_is_written(tmp_path):
    write_csv(tmp_path / "clotho_captions_evaluation.csv", [CLOTHO_HEADER, ["gone.wav", "a", "b", "c", "d", "e"]])
    with pytest.raises(ManifestError, match="no rows.*1 missing"):
        make_manifest("clotho", tmp_path, tmp_path / "out" / "m.jsonl")
    summary = json.loads((tmp_path / "out" / "m.summary.json").read_text())
    assert summary["missing"]["files"][0]["item"] == "clotho:gone.wav"
    assert not (tmp_path / "out" / "m.jsonl").exists()
