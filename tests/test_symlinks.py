"""`uti manifest --follow-symlinks`: confinement to --root stays the default; with the flag, symlinks
inside the root are followed wherever they lead, while `..` and absolute paths outside stay refused."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from sharding.manifest import build_manifest, read_manifest, summary_path
from sharding.paths import PathEscapeError, resolve_inside

SR = 16000
CLOTHO_HEADER = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]


def wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(SR * seconds)) / SR), SR)
    return path


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 120, 30)).save(path)
    return path


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)


def link_dir(link: Path, target: Path) -> None:
    """`link` (inside a dataset root) -> `target` (outside it): media kept on other storage."""
    target.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


# ----------------------------------------------------------------------------------- the CLI, end to end


def make_clotho_with_linked_development(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    root, outside = tmp_path / "clotho", tmp_path / "bulk" / "clotho_development"
    names = ["a.wav", "b with space.wav", "ç.wav"]
    for name in names:
        wav(outside / name)
    link_dir(root / "development", outside)
    write_csv(root / "clotho_captions_development.csv",
              [CLOTHO_HEADER] + [[n, f"sound {n}", "2", "3", "4", "5"] for n in names])
    return root, outside, names


def uti_manifest(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run(["uti", "manifest", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_clotho_symlinked_split_folder_needs_follow_symlinks(tmp_path):
    root, outside, names = make_clotho_with_linked_development(tmp_path)
    out = tmp_path / "manifests" / "clotho.jsonl"

    res = uti_manifest("--dataset", "clotho", "--root", root, "--out", out)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "--follow-symlinks" in res.stderr and "Traceback" not in res.stderr  # the way out is named
    assert not out.exists()
    summary = json.loads(summary_path(out).read_text())
    assert summary["follow_symlinks"] is False and summary["rows"] == 0
    assert summary["rejected"]["count"] == len(names)
    assert all("--follow-symlinks" in r["reason"] for r in summary["rejected"]["rows"])

    res = uti_manifest("--dataset", "clotho", "--root", root, "--out", out, "--follow-symlinks")
    assert res.returncode == 0, res.stderr
    assert f"{len(names)} rows" in res.stdout and "--follow-symlinks" in res.stdout
    rows = read_manifest(out)
    assert [r.id for r in rows] == sorted(f"clotho:{n}" for n in names)
    for row in rows:
        # The manifest names the file under the root (through the link); it is the file outside.
        assert row.path == str(root.resolve() / "development" / row.key)
        assert Path(row.path).resolve() == (outside / row.key).resolve()
        assert row.duration == pytest.approx(0.1)
    summary = json.loads(summary_path(out).read_text())
    assert summary["follow_symlinks"] is True and summary["rows"] == len(names)
    assert summary["rejected"]["count"] == 0 and summary["missing"]["count"] == 0


# ------------------------------------------------------------------------------ the rules that still hold


def test_follow_symlinks_still_refuses_dotdot_and_absolute_paths_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    wav(outside / "x.wav")
    wav(root / "in.wav")
    wav(tmp_path / "secret.wav")
    link_dir(root / "link", outside)
    (tmp_path / "root_alias").symlink_to(root, target_is_directory=True)
    real = root.resolve()

    assert resolve_inside(root, "link/x.wav", follow_symlinks=True) == real / "link" / "x.wav"
    assert resolve_inside(tmp_path / "root_alias", "link/x.wav", follow_symlinks=True) == real / "link" / "x.wav"
    with pytest.raises(PathEscapeError, match="symlink.*--follow-symlinks"):
        resolve_inside(root, "link/x.wav")  # confinement is the default, and its message names the way out
    with pytest.raises(PathEscapeError) as exc:
        resolve_inside(root, "../secret.wav")
    assert "--follow-symlinks" not in str(exc.value)  # the flag would not help: don't suggest it

    # '..' anywhere is refused: after a link the OS resolves it from the link's target.
    for bad in ["../secret.wav", "link/../../secret.wav", "link/../in.wav", "./../root/in.wav"]:
        with pytest.raises(PathEscapeError, match=r"'\.\.'"):
            resolve_inside(root, bad, follow_symlinks=True)
    # Absolute paths: refused, or (where a dataset format allows them) only under the root.
    with pytest.raises(PathEscapeError, match="absolute"):
        resolve_inside(root, str(root / "in.wav"), follow_symlinks=True)
    with pytest.raises(PathEscapeError, match="absolute and not under the dataset root"):
        resolve_inside(root, str(outside / "x.wav"), allow_absolute=True, follow_symlinks=True)
    for given in (root, tmp_path / "root_alias"):  # the root as given, or through a link to it
        got = resolve_inside(given, str(given / "link" / "x.wav"), allow_absolute=True, follow_symlinks=True)
        assert got == real / "link" / "x.wav"


# ---------------------------------------------------------------------- every adapter passes the flag on


def _clotho(root: Path, outside: Path) -> tuple[dict, list[str]]:
    wav(outside / "c.wav")
    link_dir(root / "evaluation", outside)
    write_csv(root / "clotho_captions_evaluation.csv", [CLOTHO_HEADER, ["c.wav", "1", "2", "3", "4", "5"]])
    return {}, ["clotho:c.wav"]


def _audiocaps(root: Path, outside: Path) -> tuple[dict, list[str]]:
    wav(outside / "vid_30.wav")
    link_dir(root / "train", outside)
    write_csv(root / "train.csv", [["audiocap_id", "youtube_id", "start_time", "caption"], ["7", "vid", "30", "a dog"]])
    return {}, ["audiocaps:vid_30"]


def _llava(root: Path, outside: Path) -> tuple[dict, list[str]]:
    png(outside / "00000" / "000000000.jpg")
    link_dir(root / "images", outside)
    entry = {"id": "000000000", "image": "00000/000000000.jpg", "conversations": [{"from": "gpt", "value": "green"}]}
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps([entry]))
    return {}, ["llava:000000000"]


def _jsonl(root: Path, outside: Path) -> tuple[dict, list[str]]:
    wav(outside / "a.wav")
    link_dir(root / "media", outside)
    (root / "data.jsonl").write_text(json.dumps({"id": "a", "modality": "audio", "path": "media/a.wav"}) + "\n")
    return {}, ["jsonl:a"]


def _hf(root: Path, outside: Path) -> tuple[dict, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    wav(outside / "a.wav")
    link_dir(root / "media", outside)
    pq.write_table(pa.table({"path": ["media/a.wav"], "text": ["hi"]}), root / "part-0.parquet")
    return {"audio_column": "path", "caption_column": "text"}, ["hf:media/a.wav"]


@pytest.mark.parametrize("make", [_clotho, _audiocaps, _llava, _jsonl, _hf], ids=lambda f: f.__name__[1:])
def test_every_adapter_follows_symlinks_only_when_asked(tmp_path, make: Callable):
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    options, ids = make(root, outside)
    confined = build_manifest(make.__name__[1:], root, **options)
    assert confined.rows == [] and len(confined.rejected) == len(ids)
    assert all("--follow-symlinks" in r.reason for r in confined.rejected), confined.rejected
    assert confined.summary()["follow_symlinks"] is False

    followed = build_manifest(make.__name__[1:], root, follow_symlinks=True, **options)
    assert [r.id for r in followed.rows] == ids and followed.rejected == [] and followed.missing == []
    for row in followed.rows:
        assert Path(row.path).is_relative_to(root.resolve())
        assert Path(row.path).resolve().is_relative_to(outside.resolve()) and row.bytes == Path(row.path).stat().st_size
    assert followed.summary()["follow_symlinks"] is True
