"""The reading examples in docs/FORMAT.md, executed as they stand on shards from our writer.

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
