"""Training read-ahead (sharding.prefetch): the prefetched byte ranges give the reader exactly the bytes and
samples a direct read gives, and the prefetcher never holds more than its limits. The end-to-end check on a
bucket (same batches with and without read-ahead) is in test_object_storage.py."""

from __future__ import annotations

import threading
import time

import pytest

from sharding.format import list_shards
from sharding.prefetch import ByteRange, PrefetchLimits, ShardPrefetcher, shard_range
from sharding.reader import read_shard
from test_shards import SPACE, write


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefetch")
    write(out, 7)
    (ref,) = list_shards(out)
    return ref


def _samples(ref, start, source=None, stop=None):
    got = []
    for s in read_shard(ref.tar_path, expected_token_space=SPACE.id, index=ref.index, start=start, source=source):
        got.append((s.index_in_shard, s.key, s.tokens.tobytes(), s.text.tobytes(), s.meta))
        if stop is not None and s.index_in_shard == stop:
            break
    return got


@pytest.mark.parametrize("first,last,drains", [(0, 6, True), (3, 6, True), (2, 3, False), (5, 5, False)])
def test_prefetched_range_reads_the_same_samples(shard, first, last, drains):
    prefetcher = ShardPrefetcher(PrefetchLimits(shards=2))
    r = shard_range(shard, first, last, drains=drains)
    assert prefetcher.request(r)
    source = prefetcher.take(shard.tar_path, r.start)
    assert source is not None and prefetcher.hits == 1
    stop = None if drains else last
    assert _samples(shard, first, source, stop) == _samples(shard, first, None, stop)
    if drains:  # the whole needed range was fetched ahead: nothing read from the file afterwards
        assert source.fallback_reads == 0
    prefetcher.close()


def test_prefetcher_never_holds_more_than_its_limits(shard):
    """Fetches that take a while: requests beyond `shards` ranges or `bytes` are refused, not queued."""
    gate = threading.Event()
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow_fetch(r: ByteRange):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        gate.wait(5)
        with lock:
            active[0] -= 1
        return None

    prefetcher = ShardPrefetcher(PrefetchLimits(shards=2, bytes=10_000), fetch=slow_fetch)
    ranges = [ByteRange(f"s3://b/s{i}.tar", 512, 512, None, 4_000) for i in range(5)]
    assert [prefetcher.request(r) for r in ranges] == [True, True, False, False, False]
    assert not prefetcher.request(ByteRange("s3://b/big.tar", 512, 512, None, 9_000))  # over the byte limit
    time.sleep(0.1)
    gate.set()
    prefetcher.take("s3://b/s0.tar", 512)  # waits for the fetch (which returned nothing): one slot free
    assert prefetcher.request(ranges[2])
    assert prefetcher.peak_held == 2 and peak[0] <= 2 and prefetcher.peak_bytes <= 10_000
    prefetcher.retain(set())  # the stream moved on: what it held is dropped, the slots are free again
    assert prefetcher.request(ranges[3]) and prefetcher.request(ranges[4])
    prefetcher.close()
