"""Shard plan: determinism, grouping by samples and seconds, per-split names, load/validate."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from sharding.manifest import ManifestRow, manifests_sha256, read_manifests, write_manifest
from sharding.outdir import load_plan, write_plan
from sharding.plan import PlanError, make_plan, plan_from_bytes, plan_sha256

SHA = "ab" * 32


def row(key: str, split: str = "train", duration: float | None = None, modality: str = "audio") -> ManifestRow:
    return ManifestRow(
        id=f"d:{key}", dataset="d", modality=modality, path=None if modality == "text" else f"/x/{key}.wav",
        captions=("c",), split=split, duration=duration,
    )


def rows_mixed(n: int = 50) -> list[ManifestRow]:
    return [row(f"{i:03d}", split=("train", "val", "test")[i % 3], duration=0.5 + (i % 7) / 10) for i in range(n)]


def test_plan_is_byte_identical_and_order_independent(tmp_path):
    rows = rows_mixed()
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    write_plan(tmp_path / "a", make_plan(rows, manifest_sha256=SHA, target_samples=4))
    write_plan(tmp_path / "b", make_plan(shuffled, manifest_sha256=SHA, target_samples=4))
    p1, p2 = tmp_path / "a" / "plan.json", tmp_path / "b" / "plan.json"
    assert p1.read_bytes() == p2.read_bytes()
    assert plan_sha256(load_plan(tmp_path / "a")[0]) == hashlib.sha256(p1.read_bytes()).hexdigest()
    # Canonical: compact, sorted keys.
    text = p1.read_text()
    assert text.startswith('{"format":"uti.plan","manifest_sha256":"' + SHA + '","splits":{"test":[{"ids":["d:002"')
    assert json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) == text
    # A different target gives a different plan.
    p3 = make_plan(rows, manifest_sha256=SHA, target_samples=5)
    assert p3.to_bytes() != p1.read_bytes()


def test_samples_grouping_and_per_split_indexing():
    rows = [row(f"{i:02d}", "train") for i in range(25)] + [row(f"v{i}", "val") for i in range(3)]
    plan = make_plan(rows, manifest_sha256=SHA, target_samples=10)
    assert list(plan.splits) == ["train", "val"]
    train = plan.splits["train"]
    assert [s.name for s in train] == ["shard-000000", "shard-000001", "shard-000002"]
    assert [s.num_samples for s in train] == [10, 10, 5]
    assert train[0].ids == tuple(f"d:{i:02d}" for i in range(10))  # consecutive in ID order
    assert [s.name for s in plan.splits["val"]] == ["shard-000000"]  # index restarts per split
    assert plan.num_samples == 28 and plan.num_shards == 4
    assert make_plan(rows, manifest_sha256=SHA).target == {"samples": 1000}


def test_seconds_grouping_long_items_alone_unknown_durations_count_zero():
    durs = {"a": 4.0, "b": 4.0, "c": 4.0, "d": 25.0, "e": None, "f": 6.0, "g": 5.0, "h": 1.0}
    rows = [row(k, duration=d) for k, d in durs.items()] + [row("i", duration=99.0, modality="image")]
    plan = make_plan(rows, manifest_sha256=SHA, target_seconds=10)
    got = [(list(s.ids), s.seconds) for s in plan.splits["train"]]
    assert got == [
        (["d:a", "d:b"], 8.0),          # a third 4 s item would pass 10 s: new shard
        (["d:c"], 4.0),                 # 25 s does not fit after c
        (["d:d"], 25.0),                # longer than the target: alone
        (["d:e", "d:f"], 6.0),          # unknown duration counts 0 s
        (["d:g", "d:h", "d:i"], 6.0),   # non-audio counts 0 s
    ]
    assert plan.target == {"seconds": 10.0}
    # Reaching the target exactly closes the shard.
    exact = make_plan([row("x", duration=5.0), row("y", duration=5.0), row("z", duration=1.0)],
                      manifest_sha256=SHA, target_seconds=10)
    assert [list(s.ids) for s in exact.splits["train"]] == [["d:x", "d:y"], ["d:z"]]


def test_plan_input_errors():
    with pytest.raises(PlanError, match="not both"):
        make_plan([row("a")], manifest_sha256=SHA, target_samples=1, target_seconds=1.0)
    for kw in ({"target_samples": 0}, {"target_seconds": -1.0}, {"target_seconds": float("inf")}):
        with pytest.raises(PlanError):
            make_plan([row("a")], manifest_sha256=SHA, **kw)
    with pytest.raises(PlanError, match="duplicate.*'d:a'"):
        make_plan([row("a"), row("a", split="val")], manifest_sha256=SHA)


def test_load_plan_roundtrip_and_validation(tmp_path):
    plan = make_plan(rows_mixed(), manifest_sha256=SHA, target_seconds=2.0)
    write_plan(tmp_path, plan)
    path = tmp_path / "plan.json"
    loaded, _ = load_plan(tmp_path)
    assert loaded == plan and loaded.to_bytes() == path.read_bytes()
    assert loaded.shard("val", "shard-000000").ids == plan.splits["val"][0].ids

    data = json.loads(path.read_bytes())
    cases = [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(format="x"), "format"),
        (lambda d: d["splits"]["train"][0].update(num_samples=999), "num_samples"),
        (lambda d: d["splits"]["train"][1].update(name="shard-000007"), "should be 'shard-000001'"),
        (lambda d: d["splits"]["val"][0]["ids"].__setitem__(0, d["splits"]["train"][0]["ids"][0]),
         "also in train/shard-000000"),
        (lambda d: d.update(target={"samples": 1, "seconds": 2}), "target"),
    ]
    for mutate, match in cases:
        bad = json.loads(json.dumps(data))
        mutate(bad)
        with pytest.raises(PlanError, match=match):
            plan_from_bytes(json.dumps(bad).encode())
    with pytest.raises(FileNotFoundError, match="no plan.json in"):
        load_plan(tmp_path / "nope")


def test_plan_over_several_manifests(tmp_path):
    write_manifest(tmp_path / "a.jsonl", [row("1", duration=1.0), row("3", duration=1.0)])
    write_manifest(tmp_path / "b.jsonl", [row("2", duration=1.0)])
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    plan = make_plan(read_manifests(paths), manifest_sha256=manifests_sha256(paths), target_samples=2)
    assert [list(s.ids) for s in plan.splits["train"]] == [["d:1", "d:2"], ["d:3"]]
    assert plan.manifest_sha256 == manifests_sha256(paths[::-1]) != manifests_sha256(paths[:1])
