"""`uti manifest` end to end through the installed console script."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from sharding.manifest import hash_split, manifest_sha256, read_manifest

SR = 16000


def wav(path: Path, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(SR * seconds)) / SR), SR)


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (0, 90, 200)).save(path)


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)


def uti(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["uti", "manifest", *map(str, args)], capture_output=True, text=True, timeout=120)


def summary_of(out: Path) -> dict:
    return json.loads(out.with_suffix(".summary.json").read_text())


def test_cli_clotho(tmp_path):
    root = tmp_path / "clotho"
    name = 'Bäckerei, "früh" morning.wav'
    wav(root / "evaluation" / name)
    write_csv(root / "clotho_captions_evaluation.csv", [
        ["file_name"] + [f"caption_{i}" for i in range(1, 6)],
        [name, "a, b", "c", "d", "e", "f"],
        ["absent.wav", "a", "b", "c", "d", "e"],
    ])
    out = tmp_path / "out" / "clotho.jsonl"
    res = uti("--dataset", "clotho", "--root", root, "--out", out)
    assert res.returncode == 0, res.stderr
    assert "1 rows" in res.stdout and "evaluation: 1 audio" in res.stdout and "missing files: 1" in res.stdout
    (row,) = read_manifest(out)
    assert row.id == f"clotho:{name}" and row.captions[0] == "a, b" and row.split == "evaluation"
    summary = summary_of(out)
    assert summary["manifest_sha256"] == manifest_sha256(out)
    assert summary["by_split"] == {"evaluation": {"audio": 1}}
    assert summary["missing"] == {"count": 1, "files": [{
        "item": "clotho:absent.wav", "path": "evaluation/absent.wav",
        "reason": "file not found (tried evaluation/absent.wav)",
    }]}


def test_cli_audiocaps_pattern_and_split(tmp_path):
    root = tmp_path / "ac"
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    root.mkdir()
    write_csv(root / "val.csv",
              [header, ["7", "vid", "30", "second"], ["3", "vid", "30", "first"], ["8", "lost", "0", "x"]])
    write_csv(root / "train.csv", [header, ["1", "t", "0", "train clip"]])
    wav(root / "audio" / "Yvid.wav")
    wav(root / "audio" / "Yt.wav")
    out = tmp_path / "ac.jsonl"
    res = uti("--dataset", "audiocaps", "--root", root, "--audio-pattern", "Y{youtube_id}.wav", "--split", "val",
              "--out", out)
    assert res.returncode == 0, res.stderr
    (row,) = read_manifest(out)  # --split val leaves the train clip out
    assert row.id == "audiocaps:vid_30" and row.captions == ("first", "second")
    assert summary_of(out)["missing"]["count"] == 1


def test_cli_llava_split_fractions(tmp_path):
    root = tmp_path / "llava"
    entries = []
    for i in range(6):
        png(root / "images" / "000" / f"{i}.jpg")
        entries.append({"id": str(i), "image": f"000/{i}.jpg",
                        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"cap {i}"}]})
    entries.append({"id": "x", "image": "000/x.jpg", "conversations": []})
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(entries))
    out = tmp_path / "llava.jsonl"
    res = uti("--dataset", "llava", "--root", root, "--split-fractions", "train=0.5,val=0.5", "--out", out)
    assert res.returncode == 0, res.stderr
    rows = read_manifest(out)
    assert [r.id for r in rows] == [f"llava:{i}" for i in range(6)]
    assert all(r.split == hash_split(r.id, {"train": 0.5, "val": 0.5}) and r.modality == "image" for r in rows)
    assert summary_of(out)["rejected"]["count"] == 1 and "rejected: 1" in res.stdout


def test_cli_jsonl_with_escape(tmp_path):
    root = tmp_path / "j"
    wav(root / "a.wav")
    wav(tmp_path / "outside.wav")
    lines = [{"id": "a", "modality": "audio", "path": "a.wav", "captions": ["x"], "split": "train"},
             {"id": "b", "modality": "audio", "path": "../outside.wav", "split": "train"}]
    (root / "rows.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "m.jsonl"
    res = uti("--dataset", "jsonl", "--root", root, "--out", out)
    assert res.returncode == 0, res.stderr
    assert [r.id for r in read_manifest(out)] == ["jsonl:a"]
    (rej,) = summary_of(out)["rejected"]["rows"]
    assert rej["item"] == "jsonl:b" and "outside the dataset root" in rej["reason"]


def test_cli_user_errors_exit_2_with_one_line(tmp_path):
    (tmp_path / "clotho_captions_development.csv").write_text("file_name,caption_1\na.wav,x\n")
    cases = [
        (["--dataset", "clotho", "--root", tmp_path], "missing required column 'caption_2'"),
        (["--dataset", "llava", "--root", tmp_path, "--split-fractions", "train=2"], "sum to 1"),
        (["--dataset", "clotho", "--root", tmp_path, "--audio-pattern", "x{youtube_id}"], "does not take option"),
    ]
    for args, needle in cases:
        res = uti(*args, "--out", tmp_path / "m.jsonl")
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("uti manifest: error:") and needle in lines[0], res.stderr
        assert "Traceback" not in res.stderr
