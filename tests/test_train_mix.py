"""Training input: `--mix` is the realised task ratio with batches that mix
modalities even when every shard holds one modality; tasks that cannot produce a sequence are named
on the console (and a run where none can is refused); `--split` per input with aliases.

The data is laid out like `uti tokenize` lays out real datasets: the plan sorts rows by ID, so each
shard holds one modality (audio shards, then image shards, then text-only).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.census import resolve_split, resolve_splits
from train.config import TASKS, TrainConfig, TrainError
from train.sequences import NO_TASK, Specials
from train.stream import BatchStream, heldout_text_docs
from train_helpers import encode_media, make_sample, make_samples, row, write_out, write_png, write_wav
from uti.assets import synth_audio, synth_image

MIX = {"a2t": 0.3, "t2a": 0.25, "i2t": 0.15, "t2i": 0.15, "text": 0.15}
TASK_INDEX = {t: i for i, t in enumerate(TASKS)}
IMAGE_TASKS = (TASK_INDEX["i2t"], TASK_INDEX["t2i"])


# ---- data ---------------------------------------------------------------------------------------------
def audio_samples(tok, n: int, *, name: str, split: str, src: Path, seconds: tuple[float, float] = (0.3, 0.6),
                  distinct: int = 6):
    """n audio samples; only `distinct` clips (WAVs in src) are encoded (EnCodec on 2 busy cores is the slow
    part) and reused under other IDs and captions. 0.3-0.6 s: some clips have exactly 32 frames x 8 = 256
    tokens, an image's count, which the per-modality streams must survive."""
    sr = tok.audio.sample_rate
    secs = np.linspace(seconds[0], seconds[1], distinct)
    wavs = [write_wav(src / f"{name}-{i}.wav", synth_audio(("tone", "chirp", "noise")[i % 3], seconds=float(secs[i]),
                                                          sample_rate=sr, seed=i), sr) for i in range(distinct)]
    rows = [row(f"{name}:{i:04d}", modality="audio", split=split, captions=[f"sound {i}", f"clip {i} of {name}"],
                path=wavs[i % distinct]) for i in range(n)]
    encoded = encode_media(tok, rows[:distinct])
    return [make_sample(tok, r, encoded[rows[i % distinct].id]) for i, r in enumerate(rows)]


def image_samples(tok, n: int, *, name: str, split: str, src: Path, seed: int = 0):
    return make_samples(tok, [row(f"{name}:{i:04d}", modality="image", split=split, captions=[f"picture {i}"],
                                  path=write_png(src / f"{name}-{i}.png", synth_image(size=tok.image.proc_size[0],
                                                                                       seed=seed + i)))
                              for i in range(n)])


def text_samples(tok, n: int, *, name: str, split: str):
    return make_samples(tok, [row(f"{name}:{i:04d}", modality="text", split=split,
                                  captions=[f"plain text number {i}"]) for i in range(n)])


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@pytest.fixture(scope="module")
def modal(tmp_path_factory, default_tokenizer):
    """One input whose train split is 5 audio shards, 1 image shard and 1 text-only shard: audio is 30
    of 42 samples, images are 6, as after `uti tokenize` of a mostly-audio dataset."""
    tok = default_tokenizer
    root = tmp_path_factory.mktemp("mix")
    audio = audio_samples(tok, 30, name="aud", split="train", src=root / "src")
    shards = chunks(audio, 6) + [image_samples(tok, 6, name="img", split="train", src=root / "src"),
                                 text_samples(tok, 6, name="txt", split="train")]
    return write_out(root / "OUT", tok, [("train", samples) for samples in shards])


def stream(out: Path, space, *, rank: int = 0, world: int = 1, **kw) -> BatchStream:
    cfg = TrainConfig(data=(str(out),), out="unused", **{"seq_len": 512, "batch_size": 2, "mix": MIX, **kw})
    return BatchStream([{"out": str(out), "token_space_id": space.id}], cfg=cfg, sp=Specials.from_space(space),
                       vocab_size=space.vocab_size, rank=rank, world_size=world)


def doc_tasks(batch) -> list[int]:
    """The task of every doc in a batch (one per doc start)."""
    starts = (batch["position_ids"] == 0) & (batch["task_ids"] != NO_TASK)
    return batch["task_ids"][starts].tolist()


# ---- item 7: the mix is the realised ratio, batches mix modalities ----------------------------------------
@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
def test_mix_is_realised_over_single_modality_shards(modal, default_space, rank, world):
    s = stream(modal, default_space, rank=rank, world=world, batch_size=4)
    batches = [s.next_batch() for _ in range(30)]
    counts = Counter(t for b in batches for t in doc_tasks(b))
    total = sum(counts.values())
    assert total > 140
    for task, ratio in MIX.items():
        share = counts[TASK_INDEX[task]] / total
        assert abs(share - ratio) < 0.03, f"{task}: {share:.3f} of {total} docs, --mix asks {ratio}"
    # the stream's own counters (what metrics.jsonl reports as mix_T) agree within the docs still packing
    built = sum(s.stats.tasks.values())
    assert all(abs(s.stats.tasks[t] / built - MIX[t]) < 0.02 for t in TASKS)
    # image docs in every window of 2 steps: batches mix modalities, whatever shard is being read
    for i in range(0, len(batches) - 1):
        window = doc_tasks(batches[i]) + doc_tasks(batches[i + 1])
        assert any(t in IMAGE_TASKS for t in window), f"no image task in steps {i}..{i + 1}"


def test_mix_resume_gives_the_same_batches(modal, default_space):
    s = stream(modal, default_space, rank=1, world=2)
    for _ in range(7):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))  # plain data: fits a weights_only checkpoint
    expected = [s.next_batch() for _ in range(25)]  # crosses shard and epoch boundaries of every stream
    resumed = stream(modal, default_space, rank=1, world=2)
    resumed.load_state_dict(state)
    for i, a in enumerate(expected):
        b = resumed.next_batch()
        assert all(np.array_equal(a[k], b[k]) for k in a), f"batch {i} after resume differs"
    assert resumed.stats.to_dict() == s.stats.to_dict()
    other = stream(modal, default_space, rank=0, world=2)
    with pytest.raises(TrainError, match="rank 1 of 2"):
        other.load_state_dict(state)


def test_ranks_split_every_modality(modal, default_space):
    """In every epoch the ranks' shares of a modality are disjoint, equal in size and cover it: by
    samples, whether it spans many shards (audio: 5) or one (text)."""
    ranks = [stream(modal, default_space, rank=r, world=2) for r in (0, 1)]
    for key, n in (("0:audio", 30), ("0:text", 6)):
        streams = [s.streams[key] for s in ranks]
        for epoch in range(3):
            shares = [st.epoch_positions(epoch) for st in streams]
            assert len(shares[0]) == len(shares[1]) == n // 2
            assert not set(shares[0]) & set(shares[1]) and len(set(shares[0]) | set(shares[1])) == n
    text = [s.streams["0:text"] for s in ranks]
    per_rank = []
    for st in text:
        ids = []
        while (item := st._read_one())[1] == 0:  # one epoch
            ids.append(item[0].meta["id"])
        per_rank.append(ids)
    assert len(per_rank[0]) == len(per_rank[1]) == 3
    assert sorted(per_rank[0] + per_rank[1]) == [f"txt:{i:04d}" for i in range(6)]


# ---- two inputs whose split names differ (Clotho-like and LLaVA-like) ---------------------------------
@pytest.fixture(scope="module")
def two(tmp_path_factory, default_tokenizer):
    """A: audio in development (2 shards) / validation / evaluation, as Clotho names them.
    B: images in train (2 shards) + text-only / val, as LLaVA's hash split and AudioCaps name them."""
    tok = default_tokenizer
    root = tmp_path_factory.mktemp("two")
    src = root / "src"
    audio = audio_samples(tok, 12, name="clo", split="development", src=src, seconds=(0.5, 0.8))  # no clip of 32 frames
    a = write_out(root / "A", tok, [("development", samples) for samples in chunks(audio, 6)]
                  + [("validation", text_samples(tok, 3, name="clo-val", split="validation")),
                     ("evaluation", text_samples(tok, 3, name="clo-eval", split="evaluation"))])
    images = image_samples(tok, 6, name="lla", split="train", src=src)
    b = write_out(root / "B", tok, [("train", samples) for samples in chunks(images, 3)]
                  + [("train", text_samples(tok, 4, name="lla-txt", split="train")),
                     ("val", image_samples(tok, 2, name="lla-val", split="val", src=src, seed=50))])
    return a, b


# ---- item 12: --split per input, aliases, the splits that exist --------------------------------------------
def test_split_per_input_and_aliases(two, tmp_path):
    a, b = map(str, two)
    assert resolve_splits([a, b], "development,train") == ["development", "train"]
    assert resolve_splits([a, b], "train") == ["development", "train"]  # alias: train = Clotho's development
    assert resolve_splits([a, b], "val") == ["validation", "val"]
    assert resolve_split(a, "test") == "evaluation"
    with pytest.raises(TrainError) as err:
        resolve_split(b, "evaluation")
    msg = str(err.value)
    assert "evaluation" in msg and "test" in msg and "train (3 shards)" in msg and "val (1 shard)" in msg
    with pytest.raises(TrainError, match="names 3 splits for 2"):
        resolve_splits([a, b], "development,train,val")
    # the driver accepts the pair (today: "no complete shards for split 'train'" for A) and tells workers
    from train.runner import prepare_run

    for split in ("development,train", "train"):
        cfg = TrainConfig(data=(a, b), out=str(tmp_path / f"run-{split}"), split=split, num_workers=2, seq_len=512)
        config = prepare_run(cfg)
        assert [i["split"] for i in config["inputs"]] == ["development", "train"]


def test_heldout_text_follows_the_resolved_split(two, default_space):
    a, b = map(str, two)
    cfg = TrainConfig(data=(a, b), out="unused", split="train", seq_len=512, mix=MIX)
    s = BatchStream([{"out": a, "token_space_id": default_space.id}, {"out": b, "token_space_id": default_space.id}],
                    cfg=cfg, sp=Specials.from_space(default_space), vocab_size=default_space.vocab_size, rank=0,
                    world_size=1)
    assert s.splits == ["development", "train"]
    assert set(s.streams) == {"0:audio", "1:image", "1:text"}
    s.next_batch()
    held = heldout_text_docs(a, token_space_id=default_space.id, train_split=s.splits[0],
                             sp=Specials.from_space(default_space), seq_len=512, limit=5)
    assert held.split == "validation" and len(held.docs) == 3  # never Clotho's development: what --split train trains on
    assert held.held_out and held.not_held_out is None


# ---- item 8: tasks without sequences are named; none at all is refused ----------------------------------
def test_tasks_longer_than_seq_len_are_named(two, default_space, tmp_path, caplog):
    from train.runner import prepare_run

    a, b = map(str, two)
    cfg = TrainConfig(data=(a, b), out=str(tmp_path / "short"), split="train", num_workers=2, seq_len=128, mix=MIX)
    with caplog.at_level(logging.WARNING):
        prepare_run(cfg)
    text = caplog.text
    for task in ("a2t", "t2a"):
        assert f"task {task}: all 12 captioned audio samples are longer than --seq-len 128" in text
    assert "raise --seq-len or use --overlong split" in text
    assert "task i2t: all 6 captioned image samples are longer than --seq-len 128" in text
    assert "task text" not in text
    assert "renormalised over the tasks that can be trained: text=1" in text
    # the workers reach the same conclusion from the same indexes: only text is trained, nothing hangs
    inputs = [{"out": a, "token_space_id": default_space.id}, {"out": b, "token_space_id": default_space.id}]
    s = BatchStream(inputs, cfg=cfg, sp=Specials.from_space(default_space), vocab_size=default_space.vocab_size,
                    rank=0, world_size=1)
    assert s.available() == ["text"]
    batch = s.next_batch()
    assert set(doc_tasks(batch)) == {TASK_INDEX["text"]}
    only_media = TrainConfig(data=(a, b), out="unused", split="train", seq_len=128, mix={"a2t": 1.0, "t2i": 1.0})
    with pytest.raises(TrainError, match="none of the requested tasks"):
        BatchStream(inputs, cfg=only_media, sp=Specials.from_space(default_space), vocab_size=default_space.vocab_size,
                    rank=0, world_size=1)


def test_no_task_can_produce_a_sequence_is_refused(two, tmp_path, capsys):
    from uti.cli import main

    a, b = map(str, two)
    code = main(["train", "--data", a, "--data", b, "--split", "development,train", "--out", str(tmp_path / "none"),
                 "--seq-len", "128", "--mix", "a2t=0.5,t2i=0.5", "--num-workers", "2"])
    err = capsys.readouterr().err
    assert code != 0
    assert "none of the requested tasks" in err and "task a2t: all 12" in err and "task t2i: all 6" in err
    assert not (tmp_path / "none" / "ray").exists()  # refused before any worker started


# ---- end to end: Clotho-like + LLaVA-like with one --split, the realised mix in metrics.jsonl -------------
def test_train_run_mixes_both_inputs_and_reports_the_mix(two, tmp_path):
    from train.metrics import read_metrics
    from uti.cli import main

    a, b = map(str, two)
    run = tmp_path / "run"
    # in this process (--num-workers 0): the mix over inputs and tasks is per rank; the ranks' shares are
    # test_ranks_split_every_modality's, the sums over ranks test_train_trainer's
    code = main(["train", "--data", a, "--data", b, "--split", "train", "--out", str(run), "--num-workers", "0",
                 "--steps", "6", "--seq-len", "512", "--batch-size", "4",
                 "--mix", ",".join(f"{t}={r}" for t, r in MIX.items())])
    assert code == 0
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:  # every step's batch holds audio and image tasks, from both inputs
        assert r["batch_docs_a2t"] + r["batch_docs_t2a"] > 0 and r["batch_docs_i2t"] + r["batch_docs_t2i"] > 0, r
    last = rows[-1]
    for task, ratio in MIX.items():  # the realised share of docs per task, cumulative over the run
        assert abs(last[f"mix_{task}"] - ratio) < 0.05, (task, last[f"mix_{task}"])
    drift = json.loads((run / "text_drift.json").read_text())
    assert drift["heldout_split"] == "validation"  # Clotho's held-out split, not its (aliased) training split
