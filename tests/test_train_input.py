"""Training input for any number of ranks: sample-level rank shares with equal counts,
weighted mixing of --data inputs, the shuffle buffer flag, and `uti train --num-workers 2` on a
split of one shard.

The data is text-only (no codec runs: fast): samples made by the tokenize job's build_sample, OUT written by
its writers (tests/train_helpers.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.config import TrainConfig
from train.metrics import read_metrics
from train.sequences import NO_TASK, Specials
from train.stream import BatchStream, rank_share
from train_helpers import make_samples, row, write_out
from uti.errors import ConfigError

UNEVEN = (3, 4, 5, 2, 6)  # 20 samples in 5 shards of different sizes


def text_shards(tok, name: str, sizes: tuple[int, ...], caption=lambda i: f"line {i}",
                split: str = "train") -> list[tuple[str, list[dict]]]:
    """Text-only samples `name:0000`, ... of `split` in shards of `sizes` samples (made by the job's
    build_sample, train_helpers)."""
    rows = [row(f"{name}:{i:04d}", modality="text", split=split, captions=[caption(i)]) for i in range(sum(sizes))]
    samples = make_samples(tok, rows)
    starts = np.cumsum((0,) + tuple(sizes))
    return [(split, samples[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def text_input(root: Path, tok, name: str, sizes: tuple[int, ...], caption=lambda i: f"line {i}",
               split: str = "train", *, more: list[tuple[str, list[dict]]] = ()) -> Path:
    """OUT `root/name` holding text_shards (and the shards of `more`), written by the job's writers."""
    return write_out(root / name, tok, text_shards(tok, name, sizes, caption, split) + list(more))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, default_tokenizer):
    root = tmp_path_factory.mktemp("input")
    tok = default_tokenizer
    held_out = text_shards(tok, "one", (4,), caption=lambda i: f"held out {i}", split="validation")  # --eval-split val
    return {
        "uneven": text_input(root, tok, "uneven", UNEVEN),
        "one": text_input(root, tok, "one", (10,), more=held_out),
        # two inputs told apart by caption length: "a a" (short) and a long one
        "a": text_input(root, tok, "a", (40,), caption=lambda i: "a a"),
        "b": text_input(root, tok, "b", (25, 15), caption=lambda i: "b b b b b b b b b b b b"),
    }


def make(outs, space, *, rank=0, world=1, **kw) -> BatchStream:
    cfg = TrainConfig(data=tuple(str(o) for o in outs), out="unused",
                      **{"seq_len": 256, "batch_size": 4, "mix": {"text": 1.0}, **kw})
    return BatchStream([{"out": str(o), "token_space_id": space.id} for o in outs], cfg=cfg,
                       sp=Specials.from_space(space), vocab_size=space.vocab_size, rank=rank, world_size=world)


def epoch_ids(stream, epoch: int = 0) -> list[str]:
    """The samples a stream reads in one epoch of its rank share (read from the tars)."""
    out = []
    while True:
        item = stream._read_one()
        if item[1] != epoch:
            return out
        out.append(item[0].meta["id"])


# ---- item 1: sample-level partitioning -------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 3, 4, 7])
def test_ranks_share_an_epoch_by_samples_with_equal_counts(inputs, default_space, world):
    """Five uneven shards over 2..7 ranks: every rank reads ceil(20 / world) samples; together they
    read every sample, and only the padding (the epoch's first world*share - 20 samples) twice."""
    share = rank_share(20, world)
    per_rank = [epoch_ids(make([inputs["uneven"]], default_space, rank=r, world=world).streams["0:text"])
                for r in range(world)]
    assert [len(p) for p in per_rank] == [share] * world
    seen = Counter(i for p in per_rank for i in p)
    assert set(seen) == {f"uneven:{i:04d}" for i in range(20)}
    repeated = [i for i, n in seen.items() if n > 1]
    assert len(repeated) == world * share - 20 and all(seen[i] == 2 for i in repeated)
    assert set(repeated) == set(per_rank[0][:len(repeated)])  # the padding repeats the epoch's first samples
    # a new epoch, a new order (the shard order is seeded per epoch)
    again = make([inputs["uneven"]], default_space, rank=0, world=world).streams["0:text"]
    assert again.epoch_positions(0) != again.epoch_positions(1)


def test_one_shard_split_gives_every_rank_half(inputs, default_space):
    per_rank = [epoch_ids(make([inputs["one"]], default_space, rank=r, world=2).streams["0:text"]) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 5
    assert sorted(per_rank[0] + per_rank[1]) == [f"one:{i:04d}" for i in range(10)]


# ---- item 2: --data-weights -----------------------------------------------------------------------------
def _input_of_docs(batches) -> list[str]:
    """'a' or 'b' per doc, from its length (the inputs' captions differ in length)."""
    out = []
    for b in batches:
        for row_pos, row_task in zip(b["position_ids"], b["task_ids"]):
            starts = np.flatnonzero((row_pos == 0) & (row_task != NO_TASK))
            ends = list(starts[1:]) + [int((row_task != NO_TASK).sum())]
            out += ["a" if e - s < 10 else "b" for s, e in zip(starts, ends)]
    return out


@pytest.mark.parametrize("mix_by, weights", [("samples", (0.7, 0.3)), ("tokens", (0.5, 0.5))])
def test_data_weights_mix_inputs_over_10k_samples(inputs, default_space, mix_by, weights):
    s = make([inputs["a"], inputs["b"]], default_space, data_weights=weights, mix_by=mix_by, batch_size=16)
    batches = []
    while s.inputs.samples[0] + s.inputs.samples[1] < 10_000:
        batches.append(s.next_batch())
    docs = Counter(_input_of_docs(batches))
    n = docs["a"] + docs["b"]
    assert n > 9_000
    if mix_by == "samples":
        assert abs(docs["a"] / n - 0.7) < 0.01, docs
    else:  # tokens of a doc's sample: "a a" and the long caption, measured from the stream's counters
        tok_a, tok_b = (s.inputs.done[k] / s.inputs.samples[k] for k in (0, 1))
        share = docs["a"] * tok_a / (docs["a"] * tok_a + docs["b"] * tok_b)
        assert tok_b > 2 * tok_a and abs(share - 0.5) < 0.01, (docs, tok_a, tok_b)


def test_data_weights_are_deterministic_and_resume_exactly(inputs, default_space):
    def run():
        return make([inputs["a"], inputs["b"]], default_space, data_weights=(0.7, 0.3), seed=3)

    s = run()
    for _ in range(5):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))
    expected = [s.next_batch() for _ in range(10)]
    resumed = run()
    resumed.load_state_dict(state)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(expected, (resumed.next_batch() for _ in range(10)))
               for k in a)
    fresh = run()
    assert all(np.array_equal(a[k], b[k]) for a, b in zip([fresh.next_batch() for _ in range(15)][5:], expected)
               for k in a)
    unweighted = make([inputs["a"], inputs["b"]], default_space, seed=3)
    with pytest.raises(Exception, match="--data-weights"):
        unweighted.load_state_dict(state)


def test_a_small_input_repeats_its_epochs_at_its_weight(tmp_path, default_tokenizer, default_space):
    """A 20-sample music-like input at weight 0.3 against a 500-sample one: over 3 of its epochs it keeps a
    0.3 +- 0.05 share of the samples read, and every one of its samples comes back each epoch (it is
    repeated, never dropped from the mix when it runs out)."""
    small = text_input(tmp_path, default_tokenizer, "small", (8, 12), caption=lambda i: "music")
    big = text_input(tmp_path, default_tokenizer, "big", (250, 250), caption=lambda i: f"general text {i}")
    s = make([small, big], default_space, data_weights=(0.3, 0.7), batch_size=8)
    reads: list[tuple[str, int]] = []
    s.on_sample = lambda sample, epoch: reads.append((sample.meta["id"], epoch))
    checked = []

    def small_epochs() -> Counter:
        return Counter(epoch for id_, epoch in reads if id_.startswith("small:"))

    # until three whole epochs of the small input went into sequences (the shuffle buffer draws across
    # epoch boundaries, so a later epoch's first samples come in before an earlier one's last)
    while small_epochs()[2] < 20 and len(reads) < 2_000:
        s.next_batch()
        n = sum(s.inputs.samples)
        if n >= 40:  # past the first draws, the share holds at every point, not just on average
            checked.append(s.inputs.samples[0] / n)
    assert [small_epochs()[e] for e in (0, 1, 2)] == [20, 20, 20], small_epochs()
    assert checked and all(abs(share - 0.3) <= 0.05 for share in checked), (min(checked), max(checked))
    assert s.samples_read[0] / sum(s.samples_read) == pytest.approx(0.3, abs=0.05)
    per_sample = Counter(id_ for id_, epoch in reads if id_.startswith("small:") and epoch < 3)
    assert set(per_sample.values()) == {3} and len(per_sample) == 20
    big_epochs = {epoch for id_, epoch in reads if id_.startswith("big:")}
    assert big_epochs == {0}  # the large input is still in its first epoch meanwhile


def test_data_weights_flag_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--data-weights: 1 weight"):
        TrainConfig(data=("x", "y"), out="r", data_weights=(1.0,))
    with pytest.raises(ConfigError, match="--data-weights: weights must be"):
        TrainConfig(data=("x", "y"), out="r", data_weights=(0.0, 0.0))
    with pytest.raises(ConfigError, match="--shuffle-buffer"):
        TrainConfig(data=("x",), out="r", shuffle_buffer=0)
    with pytest.raises(ConfigError, match="--eval-every: give the held-out split"):
        TrainConfig(data=("x",), out="r", eval_every=5)


# ---- item 3: --shuffle-buffer ------------------------------------------------------------------------------
def test_shuffle_buffer_flag_reaches_the_streams(inputs, default_space):
    """--shuffle-buffer 1 reads in the epoch's shard order; a larger buffer reorders within it."""
    def order(buffer):
        st = make([inputs["uneven"]], default_space, shuffle_buffer=buffer).streams["0:text"]
        return [(s.meta["id"], e) for s, e in (st.next() for _ in range(20))], st

    plain, st1 = order(1)
    shuffled, st8 = order(8)
    assert st1.buffer_size == 1 and st8.buffer_size == 8
    in_order = [f"uneven:{sum(UNEVEN[:k]) + i:04d}" for name, i in st1.epoch_positions(0)
                for k in [int(name.split("-")[1])]]
    assert [i for i, _ in plain] == in_order and {e for _, e in plain} == {0}
    # the buffer fills ahead (into the next epoch at its end): epoch 0's samples, in another order
    first = [i for i, e in shuffled if e == 0]
    assert len(first) > 12 and set(first) <= set(in_order) and first != in_order[:len(first)]


# ---- `uti train --num-workers 2` on a split of one shard (Ray Train) ---------------------------------------


def test_two_workers_train_on_a_one_shard_split(inputs, tmp_path, default_space, ray_session):
    from train.checkpoint import latest_checkpoint, load_data_state
    from uti.cli import main

    run = tmp_path / "RUN"
    code = main(["train", "--data", str(inputs["one"]), "--out", str(run), "--model", "tiny", "--num-workers", "2",
                 "--steps", "2", "--seq-len", "64", "--batch-size", "1", "--mix", "text=1", "--shuffle-buffer", "4",
                 "--eval-split", "val", "--eval-every", "1", "--eval-batches", "1"])
    assert code == 0
    # item 5: the held-out loss (split "validation" by its alias) at every step, per task, on the plot
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["eval_loss"] > 0 and r["eval_loss_text"] == r["eval_loss"] and r["eval_loss_a2t"] is None
               for r in rows)
    assert rows[0]["eval_loss"] != rows[0]["loss"] and (run / "loss.png").stat().st_size > 1000
    ckpt = latest_checkpoint(run)
    states = [load_data_state(ckpt, r)["stream"]["streams"]["0:text"] for r in (0, 1)]
    assert [s["buffer_size"] for s in states] == [4, 4]
    # each rank read from its own half of the epoch: rebuild the halves and the samples still buffered
    streams = [make([inputs["one"]], default_space, rank=r, world=2).streams["0:text"] for r in (0, 1)]
    for epoch in range(3):
        halves = [set(st.epoch_positions(epoch)) for st in streams]
        assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 10
    for st, state in zip(streams, states):
        assert state["epoch"] >= 1 and state["buffer"]  # two steps read more than one epoch of a half
        for d in state["buffer"]:
            assert (d["shard"], d["index"]) in st.epoch_positions(d["epoch"])
    # elastic resume through the CLI: the same run continues as one process, in this one (--num-workers 0)
    code = main(["train", "--out", str(run), "--resume", "--num-workers", "0", "--steps", "4"])
    assert code == 0
    after = load_data_state(latest_checkpoint(run), 0)["stream"]
    assert after["world_size"] == 1 and after["streams"]["0:text"]["world_size"] == 1
    assert not (latest_checkpoint(run) / "data-rank00001.pt").exists()


# ---- item 4: elastic resume -------------------------------------------------------------------------------
def _recording(stream, log: list):
    stream.on_sample = lambda sample, epoch: log.append((sample.meta["id"], epoch))
    return stream


@pytest.mark.parametrize("old_world, new_world, steps", [(2, 1, (1, 2)), (1, 2, (2,)), (2, 3, (2, 1))])
def test_elastic_resume_reads_every_sample_of_the_epoch_once(inputs, default_space, old_world, new_world, steps):
    """Stop mid-epoch with `old_world` ranks, resume with `new_world`: over every epoch the old ranks
    had begun, the samples handed to sequence building are exactly the split (no sample skipped or
    read twice), whatever the shuffle buffers held."""
    kw = {"seq_len": 64, "batch_size": 1, "shuffle_buffer": 4}
    seen: list = []
    old = [_recording(make([inputs["uneven"]], default_space, rank=r, world=old_world, **kw), seen)
           for r in range(old_world)]
    for s, n in zip(old, steps):
        for _ in range(n):
            s.next_batch()
    states = [json.loads(json.dumps(s.state_dict())) for s in old]
    begun = {e for e, in [(st["streams"]["0:text"]["epoch"],) for st in states]}
    assert any(st["streams"]["0:text"]["buffer"] for st in states)  # resumes with samples in the buffers
    new = [_recording(make([inputs["uneven"]], default_space, rank=r, world=new_world, **kw), seen)
           for r in range(new_world)]
    for s in new:
        s.load_elastic(states)
        for _ in range(12):  # well past the leftover: several fresh epochs
            s.next_batch()
    frontier = new[0].streams["0:text"].epoch
    assert frontier > max(begun) >= 0 and all(s.streams["0:text"].epoch >= frontier for s in new)
    everything = {f"uneven:{i:04d}" for i in range(20)}
    for epoch in range(max(begun) + 1):
        got = Counter(i for i, e in seen if e == epoch)
        assert set(got) == everything and set(got.values()) == {1}, f"epoch {epoch}: {got}"
    # every fresh epoch after the resume splits equally over the new ranks again
    assert new[0].streams["0:text"].share == rank_share(20, new_world)


# ---- item 6: the IterableDataset entry point ------------------------------------------------------------------
def test_dataloader_workers_give_the_rank_readers_batches_and_resume(inputs, default_space):
    import torch
    from torch.utils.data import DataLoader

    from train.dataset import TokenBatches

    kw = {"seq_len": 64, "batch_size": 2, "mix": {"text": 1.0}, "shuffle_buffer": 4}
    ds = TokenBatches([str(inputs["uneven"])], **kw)
    loader = iter(DataLoader(ds, batch_size=None, num_workers=2))
    got = []
    for _ in range(6):
        batch = next(loader)
        ds.record(batch)
        got.append(batch)
    # worker w of 2 is rank w of 2 of `uti train`'s reader; DataLoader takes them in turn
    readers = [ds.stream(w, 2) for w in (0, 1)]
    for i, batch in enumerate(got):
        want = readers[i % 2].next_batch()
        assert all(torch.equal(batch[k], torch.from_numpy(want[k])) for k in want), f"batch {i}"
    state = ds.state_dict()
    resumed = TokenBatches([str(inputs["uneven"])], **kw)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    after = iter(DataLoader(resumed, batch_size=None, num_workers=2))
    for i in range(4):
        batch = next(after)
        want = readers[i % 2].next_batch()
        assert all(torch.equal(batch[k], torch.from_numpy(want[k])) for k in want), f"batch {i} after resume"
    # without workers the live stream is the state
    plain = TokenBatches([str(inputs["uneven"])], **kw)
    it = iter(plain)
    first = [next(it) for _ in range(3)]
    again = TokenBatches([str(inputs["uneven"])], **kw)
    again.load_state_dict(plain.state_dict())
    one = ds.stream(0, 1)
    expect = [one.next_batch() for _ in range(5)]
    assert all(torch.equal(b["input_ids"], torch.from_numpy(e["input_ids"])) for b, e in zip(first, expect))
    assert torch.equal(next(iter(again))["input_ids"], torch.from_numpy(expect[3]["input_ids"]))


def test_dataset_checks_the_token_space(inputs, default_space):
    from train.dataset import TokenBatches
    from train_helpers import other_space

    with pytest.raises(Exception, match="token space"):
        TokenBatches([str(inputs["uneven"])], token_space=other_space(default_space))


def test_a_shard_modified_after_writing_is_caught_by_the_stream(inputs, default_tokenizer, tmp_path, default_space):
    """A rank that reads a shard from its start to its end checks the tar's SHA-256 against the index
    (a same-size edit of a caption changes no count)."""
    out = text_input(tmp_path, default_tokenizer, "edited", (6,), caption=lambda i: f"caption {i}")
    tar = out / "shards" / "train" / "shard-000000.tar"
    raw = bytearray(tar.read_bytes())
    at = raw.index(b"caption 3")
    raw[at + 8] = ord("7")  # "caption 7" in the JSON meta: same size, same token counts
    tar.write_bytes(bytes(raw))
    s = make([out], default_space)
    with pytest.raises(Exception, match="SHA-256"):
        for _ in range(3):
            s.next_batch()
