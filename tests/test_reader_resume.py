"""ShardReader: deterministic order, rank/worker split, per-epoch shuffle and exact mid-epoch resume."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch.utils.data

from sharding.errors import ShardError
from sharding.reader import ShardReader
from sharding.writer import write_shard
from uti.token_space import CodecDescriptor, TokenSpace

SPACE = TokenSpace.build(
    text=CodecDescriptor(modality="text", kind="byte", name="bytes", weights="none", fingerprint="0" * 64,
                         params={"vocab_size": 256}),
    image=CodecDescriptor(modality="image", kind="vqgan", name="t", weights="random:0", fingerprint="1" * 64,
                          params={"codebook_size": 64, "proc_size": [16, 16], "grid": [4, 4]}),
    audio=CodecDescriptor(modality="audio", kind="encodec", name="t", weights="random:0", fingerprint="2" * 64,
                          params={"n_q": 2, "codebook_size": 32, "sample_rate": 24000, "frame_rate": 75,
                                  "channels": 1, "bandwidth": 1.5}),
)
SHARD_SIZES = (3, 4, 5, 2, 6)  # uneven on purpose: resume must cross shard boundaries correctly
TOTAL = sum(SHARD_SIZES)


def _sample(i: int) -> dict:
    text = (SPACE.range("text").start + np.frombuffer(f"caption {i}".encode(), dtype=np.uint8)).astype(np.uint32)
    tokens = (SPACE.range("image").start + (np.arange(16) * (i + 1)) % 64).astype(np.uint32)
    meta = {"id": f"test:{i:04d}", "split": "train", "modality": "image", "token_space_id": SPACE.id}
    return {"id": meta["id"], "tokens": tokens, "text": text, "meta": meta}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    i = 0
    for n, size in enumerate(SHARD_SIZES):
        write_shard(root, split="train", shard=f"shard-{n:06d}", token_space=SPACE,
                    samples=[_sample(j) for j in range(i, i + size)])
        i += size
    return root


def ids(samples) -> list[str]:
    return [s.meta["id"] for s in samples]


def test_default_order_is_shard_then_sample_order(out):
    assert ids(ShardReader(out, expected_token_space=SPACE)) == [f"test:{i:04d}" for i in range(TOTAL)]


@pytest.mark.parametrize("world_size, seed", [(2, None), (3, None), (3, 7), (5, 1)])
def test_ranks_cover_every_sample_exactly_once(out, world_size, seed):
    per_rank = [ids(ShardReader(out, expected_token_space=SPACE, rank=r, world_size=world_size, shuffle_seed=seed))
                for r in range(world_size)]
    assert all(per_rank), "every rank gets data when shards >= ranks"
    counts = Counter(itertools.chain.from_iterable(per_rank))
    assert sorted(counts) == [f"test:{i:04d}" for i in range(TOTAL)] and set(counts.values()) == {1}
    for r in range(world_size):  # a rank reads whole shards: no shard is split between ranks
        shards = {s.shard for s in ShardReader(out, expected_token_space=SPACE, rank=r, world_size=world_size, shuffle_seed=seed)}
        assert all(not shards & {s.shard for s in ShardReader(out, expected_token_space=SPACE, rank=o, world_size=world_size, shuffle_seed=seed)}
                   for o in range(world_size) if o != r)


def test_shuffle_is_seeded_per_epoch(out):
    def order(epoch, seed=3):
        return [s.name for s in ShardReader(out, expected_token_space=SPACE, shuffle_seed=seed, epoch=epoch).rank_shards()]

    assert order(0) == order(0)
    assert len({tuple(order(e)) for e in range(6)}) > 1, "the shard order changes across epochs"
    assert sorted(order(1)) == sorted(order(0))
    # iterating an epoch to the end moves on to the next one
    reader = ShardReader(out, expected_token_space=SPACE, shuffle_seed=3)
    first = ids(reader)
    second = ids(reader)
    assert reader.epoch == 2 and sorted(first) == sorted(second)
    assert [s.meta["id"] for s in ShardReader(out, expected_token_space=SPACE, shuffle_seed=3, epoch=1)] == second


@pytest.mark.parametrize("seed, epoch, world_size, rank, stop", [
    (None, 0, 1, 0, 7), (None, 0, 1, 0, 3), (5, 4, 1, 0, 7), (5, 2, 2, 1, 4), (None, 0, 1, 0, 0),
])
def test_resume_mid_epoch_continues_at_the_next_unseen_sample(out, seed, epoch, world_size, rank, stop):
    kw = dict(expected_token_space=SPACE, shuffle_seed=seed, epoch=epoch, world_size=world_size, rank=rank)
    full = ids(ShardReader(out, **kw))
    reader = ShardReader(out, **kw)
    head = ids(itertools.islice(iter(reader), stop))
    state = json.loads(json.dumps(reader.state_dict()))  # must survive a checkpoint file
    assert state["epoch"] == epoch and {"shard_cursor", "sample_in_shard"} <= set(state)

    resumed = ShardReader(out, **kw)
    resumed.load_state_dict(state)
    rest = ids(resumed)
    assert head + rest == full
    assert len(head) == min(stop, len(full))


def test_state_points_into_the_right_shard(out):
    reader = ShardReader(out, expected_token_space=SPACE)
    list(itertools.islice(iter(reader), 7))  # 3 from shard 0, 4 from shard 1 -> shard 1 finished
    state = reader.state_dict()
    assert (state["shard_cursor"], state["sample_in_shard"]) == (2, 0)
    list(itertools.islice(iter(reader), 1))
    assert (reader.state_dict()["shard_cursor"], reader.state_dict()["sample_in_shard"]) == (2, 1)


def test_state_from_another_setup_is_refused(out):
    reader = ShardReader(out, expected_token_space=SPACE, world_size=2, rank=0)
    state = reader.state_dict()
    with pytest.raises(ShardError, match="world_size"):
        ShardReader(out, expected_token_space=SPACE).load_state_dict(state)
    with pytest.raises(ShardError, match="shuffle_seed"):
        ShardReader(out, expected_token_space=SPACE, world_size=2, rank=0, shuffle_seed=1).load_state_dict(state)
    with pytest.raises(ShardError, match="shards_sha256"):
        refs = ShardReader(out, expected_token_space=SPACE).refs[:3]
        ShardReader(refs, expected_token_space=SPACE, world_size=2, rank=0).load_state_dict(state)


def test_more_ranks_than_shards_warns(out, caplog):
    with caplog.at_level(logging.WARNING, logger="sharding.reader"):
        reader = ShardReader(out, expected_token_space=SPACE, world_size=7, rank=6)
    assert "world_size 7 > 5 shards" in caplog.text
    assert list(reader) == []
    with pytest.raises(ShardError, match="rank"):
        ShardReader(out, expected_token_space=SPACE, world_size=2, rank=2)


def _keep(sample):
    return sample


def test_dataloader_workers_split_shards_and_resume_with_record(out):
    def loader(reader):
        return torch.utils.data.DataLoader(reader, batch_size=None, num_workers=2, collate_fn=_keep,
                                           multiprocessing_context="fork")

    everything = ids(loader(ShardReader(out, expected_token_space=SPACE)))
    assert sorted(everything) == [f"test:{i:04d}" for i in range(TOTAL)]  # each sample once, 2 workers

    reader = ShardReader(out, expected_token_space=SPACE)
    seen = []
    for sample in itertools.islice(iter(loader(reader)), 9):
        reader.record(sample)  # the main process learns what the workers delivered
        seen.append(sample.meta["id"])
    resumed = ShardReader(out, expected_token_space=SPACE)
    resumed.load_state_dict(reader.state_dict())
    rest = ids(loader(resumed))
    assert sorted(seen + rest) == sorted(everything) and not set(seen) & set(rest)


# ---- the index records member offsets; a reader seeks to its first sample ---------------------------------
def test_index_offsets_let_a_reader_seek_and_old_indexes_skip_by_streaming(tmp_path):
    import hashlib
    import tarfile

    from sharding.format import read_index, validate_index
    from sharding.reader import read_shard

    index = write_shard(tmp_path, split="train", shard="shard-000000", token_space=SPACE,
                        samples=[_sample(i) for i in range(6)])
    tar = tmp_path / "shards" / "train" / "shard-000000.tar"
    assert index["version"] == 3 and read_index(tar.with_suffix(".json")) == index
    with tarfile.open(tar) as tf:  # offsets are where each sample's first member header starts
        starts = [m.offset for m in tf.getmembers() if m.name.endswith(".tokens.npy")]
    assert index["offsets"] == starts

    # Damage sample 0's payload (same size): a reader that seeks to sample 3 never reads it.
    raw = bytearray(tar.read_bytes())
    raw[starts[0] + 512] ^= 0xFF  # first byte of the .npy magic
    tar.write_bytes(bytes(raw))
    got = list(read_shard(tar, expected_token_space=SPACE, index=index, start=3))
    assert ids(got) == [f"test:{i:04d}" for i in (3, 4, 5)] and [s.index_in_shard for s in got] == [3, 4, 5]
    with pytest.raises(ShardError, match="not a valid .npy"):  # reading from the start meets the damage
        list(read_shard(tar, expected_token_space=SPACE, index=index))

    # A version 1 index (no offsets) is still valid and read: the reader streams over samples 0..2.
    old = {k: v for k, v in index.items() if k != "offsets"} | {"version": 1,
                                                                "tar_sha256": hashlib.sha256(raw).hexdigest()}
    validate_index(old, "v1")
    with pytest.raises(ShardError, match="not a valid .npy"):
        list(read_shard(tar, expected_token_space=SPACE, index=old, start=3))
    with pytest.raises(ShardError, match="offsets must be"):
        validate_index(index | {"offsets": index["offsets"][::-1]}, "bad")
