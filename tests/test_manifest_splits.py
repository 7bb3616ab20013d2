"""A split that gets no row is named, with the fix, in manifest.summary.json and on `uti manifest`'s console."""

from __future__ import annotations

import json
import subprocess

from sharding.manifest import hash_split, make_manifest, parse_split_fractions, summary_path

# 20 text rows: under the default 0.98/0.01/0.01 every one of these IDs hashes to train
N = 20


def _jsonl(root, n: int = N, split: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"id": i, "modality": "text", "caption": f"caption {i}", **({"split": split} if split else {})}
            for i in range(n)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_fixture_hashes_every_row_to_train():
    assert {hash_split(f"jsonl:{i}") for i in range(N)} == {"train"}  # else the tests below test nothing


def test_empty_hash_splits_are_named_with_a_fix_that_fills_them(tmp_path):
    _jsonl(tmp_path / "d")
    summary = make_manifest("jsonl", tmp_path / "d", tmp_path / "m.jsonl")
    empty = {e["split"]: e for e in summary["empty_splits"]}
    assert sorted(empty) == ["test", "val"]
    assert "none of 20 rows" in empty["val"]["reason"] and "train=0.98,val=0.01,test=0.01" in empty["val"]["reason"]
    assert empty["val"]["fix"].startswith("fix: rerun with --split-fractions ")
    on_disk = json.loads(summary_path(tmp_path / "m.jsonl").read_text())
    assert on_disk["empty_splits"] == summary["empty_splits"]
    # The suggested fractions are a valid flag value, and with them no split is empty on this data.
    flag = empty["val"]["fix"].split("--split-fractions ", 1)[1].split(" ", 1)[0]
    again = make_manifest("jsonl", tmp_path / "d", tmp_path / "m2.jsonl", split_fractions=parse_split_fractions(flag))
    assert again["empty_splits"] == [] and set(again["by_split"]) == {"train", "val", "test"}


def test_rows_with_their_own_split_promise_no_hash_split(tmp_path):
    """No hash split was used: val/test of the default fractions are not expected, so nothing is named."""
    _jsonl(tmp_path / "d", split="train")
    assert make_manifest("jsonl", tmp_path / "d", tmp_path / "m.jsonl")["empty_splits"] == []


def test_a_requested_split_without_rows_is_named(tmp_path):
    _jsonl(tmp_path / "d")
    fractions = {"train": 0.95, "val": 0.05}
    assert {hash_split(f"jsonl:{i}", fractions) for i in range(N)} == {"train"}
    summary = make_manifest("jsonl", tmp_path / "d", tmp_path / "m.jsonl", splits=["train", "val"],
                            split_fractions=fractions)
    assert [e["split"] for e in summary["empty_splits"]] == ["val"]


def test_uti_manifest_prints_the_empty_splits(tmp_path):
    _jsonl(tmp_path / "d")
    res = subprocess.run(["uti", "manifest", "--dataset", "jsonl", "--root", str(tmp_path / "d"), "--out",
                          str(tmp_path / "m.jsonl")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stdout.splitlines() if "got 0 rows" in line]
    assert len(warned) == 2 and "'val'" in warned[0] + warned[1] and "'test'" in warned[0] + warned[1]
    assert all("--split-fractions" in line for line in warned)
