"""The reading examples in docs/FORMAT.md (webdataset, Hugging Face datasets, uti's reader), executed as they
stand on shards from our writer.

Each example is the ```python block after an `<!-- example: NAME ... -->` marker; the test runs that
exact text, so the documentation and what works cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from sharding.writer import write_shard
from test_shards import SPACE, make_sample

FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
OUT = Path("data/tok")  # where the examples expect `uti tokenize --out`, relative to their working directory


def example(name: str) -> str:
    text = FORMAT_MD.read_text(encoding="utf-8")
    found = re.findall(rf"<!-- example: {name}\b[^>]*-->\s*```python\n(.*?)\n```", text, flags=re.S)
    assert len(found) == 1, f"docs/FORMAT.md must hold exactly one `example: {name}` python block, found {len(found)}"
    return found[0]


def run_example(name: str) -> dict:
    namespace: dict = {"__name__": f"format_md_{name}"}
    exec(compile(example(name), f"docs/FORMAT.md example {name}", "exec"), namespace)
    return namespace


@dataclass
class Written:
    base: Path
    samples: list[dict]  # the train samples, in shard then tar order


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Written:
    """data/tok with the token space, three train shards, a val shard, and the debris of a crashed writer."""
    base = tmp_path_factory.mktemp("format_examples")
    out = base / OUT
    SPACE.write(out)
    train: list[dict] = []
    for s, n in enumerate((4, 3, 5)):
        samples = [make_sample(SPACE, 10 * s + i, "train") for i in range(n)]
        write_shard(out, split="train", shard=f"shard-{s:06d}", token_space=SPACE, samples=samples)
        train += samples
    write_shard(out, split="val", shard="shard-000000", token_space=SPACE,
                samples=[make_sample(SPACE, 99, "val")])
    shard_dir = out / "shards" / "train"
    (shard_dir / "shard-000003.tar").write_bytes(b"half a tar")  # no index: must not be read
    (shard_dir / ".shard-000004.tar.tmp-abc").write_bytes(b"x")
    return Written(base=base, samples=train)


def test_the_obvious_webdataset_pipeline_stumbles_on_the_header(written):
    """Why FORMAT.md's filter exists: without it the header arrives as a sample without tokens."""
    urls = sorted(str(p) for p in (written.base / OUT / "shards" / "train").glob("shard-00000[0-2].tar"))
    with pytest.raises(ValueError, match="didn't find"):
        list(wds.WebDataset(urls, shardshuffle=False).decode().to_tuple("tokens.npy", "text.npy", "json"))


def test_webdataset_example_reads_every_train_sample(written, monkeypatch, capsys):
    monkeypatch.chdir(written.base)
    ns = run_example("webdataset")
    printed = [line.split(" ", 1)[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == [s["id"] for s in written.samples]  # header skipped, half-written tar and val not read
    got = list(ns["dataset"])
    assert len(got) == len(written.samples)
    for (tokens, text, meta), want in zip(got, written.samples):
        assert tokens.dtype == np.uint32 and np.array_equal(tokens, want["tokens"])
        assert np.array_equal(text, want["text"]) and meta == want["meta"]


def test_webdataset_example_refuses_a_foreign_token_space(written, monkeypatch, tmp_path):
    """The example's only format check: a shard of another token space stops it."""
    from test_shards import make_space

    other = make_space("random:1")
    out = tmp_path / OUT
    SPACE.write(out)
    write_shard(out, split="train", shard="shard-000000", token_space=other, samples=[make_sample(other, 0)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="token space"):
        run_example("webdataset")


def test_dataloader_example_pads_batches_from_workers(written, monkeypatch, capsys):
    monkeypatch.chdir(written.base)
    ns = run_example("dataloader")
    assert capsys.readouterr().out.count("torch.Size") == len(list(ns["loader"]))
    pad = SPACE.special("<pad>")
    by_id = {s["id"]: s for s in written.samples}
    seen: list[str] = []
    for batch in ns["loader"]:  # two worker processes, as in the example
        assert batch["tokens"].dtype == batch["text"].dtype == ns["torch"].int64
        for row, sid in enumerate(batch["ids"]):
            want = by_id[sid]
            n, m = int(batch["token_lengths"][row]), int(batch["text_lengths"][row])
            assert (n, m) == (len(want["tokens"]), len(want["text"]))
            assert batch["tokens"][row, :n].tolist() == want["tokens"].tolist()
            assert batch["text"][row, :m].tolist() == want["text"].tolist()
            assert set(batch["tokens"][row, n:].tolist()) <= {pad} and set(batch["text"][row, m:].tolist()) <= {pad}
            assert batch["modality"][row] == want["meta"]["modality"]
        seen += batch["ids"]
    assert sorted(seen) == sorted(by_id)  # every train sample exactly once, none of val


# ---- the first example, and Hugging Face datasets on a mixed shard -------------------------------------------
def test_the_first_example_is_the_webdataset_one_with_the_header_filter():
    """Plain webdataset users meet the header first: its `.select(...)` idiom opens the page."""
    text = FORMAT_MD.read_text(encoding="utf-8")
    first = re.search(r"```(\w*)\n(.*?)\n```", text, flags=re.S)
    assert first.group(1) == "python" and first.group(2) == example("webdataset")
    assert '.select(lambda s: s["__key__"] != "__header__")' in first.group(2)


def _mixed_samples() -> list[dict]:
    """Seven audio samples, then three images (as a plan sorted by canonical ID puts clotho:… before llava:…),
    with the meta a tokenize run writes: more audio than datasets looks at to infer a schema."""
    out = []
    for i in [0, 3, 6, 9, 12, 15, 18, 1, 4, 7]:
        s = make_sample(SPACE, i, "train")
        if s["meta"]["modality"] == "audio":
            s["meta"].update(channels=1, frame_rate=75.0, source_sample_rate=16000, source_channels=1,
                             source_frames=s["meta"]["n_samples"] * 2 // 3, duration=0.1, source=f"/d/{i}.wav",
                             source_sha256="a" * 64, dataset="test")
        else:
            s["meta"].update(source_size=[40 + i, 30], source=f"/d/{i}.png", source_sha256="b" * 64, dataset="test")
        out.append(s)
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Written:
    base = tmp_path_factory.mktemp("format_mixed")
    SPACE.write(base / OUT)
    samples = _mixed_samples()
    write_shard(base / OUT, split="train", shard="shard-000000", token_space=SPACE, samples=samples)
    return Written(base=base, samples=samples)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """datasets caches what it loads: here, not in the user's ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_datasets_without_features_drops_image_fields(mixed, monkeypatch, hf_cache):
    """Why FORMAT.md's explicit features exist: the schema inferred from the first samples has no `grid`."""
    import datasets

    monkeypatch.chdir(mixed.base)
    tars = sorted(str(p) for p in (OUT / "shards" / "train").glob("*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train")
    assert "grid" not in ds.features["json"] and ds[7]["json"]["modality"] == "image"


def test_datasets_example_keeps_every_field_of_every_row(mixed, monkeypatch, hf_cache, capsys):
    monkeypatch.chdir(mixed.base)
    ns = run_example("datasets")
    rows = list(ns["ds"])
    assert [r["json"]["id"] for r in rows] == [s["id"] for s in mixed.samples]  # the header is no row
    for row, want in zip(rows, mixed.samples):
        meta = {k: v for k, v in row["json"].items() if v is not None}
        assert meta == want["meta"]  # every field kept, image rows included, nothing added
        assert row["tokens.npy"] == want["tokens"].tolist() and row["text.npy"] == want["text"].tolist()
    assert rows[-1]["json"]["grid"] == [4, 4] and rows[-1]["json"]["source_size"] == [47, 30]
    assert len(capsys.readouterr().out.splitlines()) == len(mixed.samples)


def test_datasets_example_declares_every_meta_field_uti_defines():
    """The features list against the sample-meta definitions (sharding.format, sharding.media, the codecs)."""
    from sharding.format import MEDIA_META, META_COMMON

    ns: dict = {}
    head = example("datasets").split("# Complete shards only", 1)[0]  # the features, without loading anything
    exec(compile(head, "docs/FORMAT.md example datasets (features)", "exec"), ns)
    declared = set(ns["features"]["json"])
    defined = (set(META_COMMON) | {"dataset", "source", "source_sha256", "source_ref"}
               | {k for v in MEDIA_META.values() for k in v}
               | {"n_tokens", "segment_frames", "scales"}  # a causal1d image codec; EnCodec 48 kHz
               | {"source_sample_rate", "source_channels", "source_frames", "duration", "source_size"})  # the read
    assert defined <= declared, defined - declared


@pytest.mark.ray
def test_datasets_example_declares_every_field_a_real_run_writes(reference_run):
    """Every meta key of a real tokenize run's shards (audio and images) is in the example's features."""
    from sharding.reader import ShardReader
    from uti.token_space import TokenSpace

    out, _ = reference_run(1)
    ns: dict = {}
    exec(compile(example("datasets").split("# Complete shards only", 1)[0], "features", "exec"), ns)
    declared = set(ns["features"]["json"])
    keys: dict[str, set] = {}
    for split in sorted(p.name for p in (Path(out) / "shards").iterdir()):
        for s in ShardReader(str(out), expected_token_space=TokenSpace.load(out), split=split):
            keys.setdefault(s.meta["modality"], set()).update(s.meta)
    assert {"audio", "image"} <= set(keys), keys.keys()
    for modality, found in keys.items():
        assert found <= declared, (modality, found - declared)
