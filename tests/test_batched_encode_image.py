"""Batched exact encode of the image codecs: VQGAN (the default preset's), Emu3, Janus and SEED
on small random-weight architectures, built through the registry with `encode_batch: 4` as uti.yaml sets it.

Six images at encode_batch 4 take two passes, the second with two all-zero dummy images. Each image's
codes must equal its fixed-shape reference (the image alone, its pass filled with three dummies) and
must not change when the images come in reverse order; every pass reaching the model has exactly the
shape (4, 3, S, S); the pass log counts what plan_passes planned; the actor's self-check passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uti.assets import synth_image
from uti.codecs.batching import PADDING_IMAGES, PADDING_NONE, plan_passes, self_check
from uti.codecs.registry import build_image_codec
from uti.config import config_from_yaml

BATCH, N_IMAGES = 4, 6
FAMILIES = {
    "vqgan": "image: {kind: vqgan, encode_batch: 4}",  # the default preset's image codec
    "emu3": "image: {kind: emu3, arch: small, encode_batch: 4}",
    "janus": "image: {kind: janus, arch: small, encode_batch: 4}",
    "seed": "image: {kind: seed, arch: small, encode_batch: 4, decoder: 'random:0', decode_steps: 2}",
}


def encoder_of(codec) -> torch.nn.Module:
    """The module every pass enters first (its input's batch axis is the pass's batch)."""
    return codec._net.visual_encoder if codec.kind == "seed" else codec._net.encoder


@pytest.fixture(scope="module")
def codecs():
    built = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_image_codec(config_from_yaml("text: {kind: byte}\n" + FAMILIES[kind] + "\n").image)
        return built[kind]

    return get


def images_for(codec) -> list[np.ndarray]:
    return [synth_image(size=codec.proc_size[0], seed=10 + i) for i in range(N_IMAGES)]


def code_shape(codec) -> tuple[int, ...]:
    return (codec.n_tokens,) if codec.kind == "seed" else tuple(codec.grid)


class PassInputs:
    """Records the input of every forward pass through a torch forward pre-hook on the codec's encoder."""

    def __init__(self, module: torch.nn.Module):
        self.inputs: list[torch.Tensor] = []
        self._handle = module.register_forward_pre_hook(lambda _m, args: self.inputs.append(args[0].detach().clone()))

    def __enter__(self) -> "PassInputs":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_batched_codes_equal_the_fixed_shape_reference_in_any_order(codecs, kind):
    codec = codecs(kind)
    assert codec.encode_batch == BATCH and codec.padding_rule() == PADDING_IMAGES
    images = images_for(codec)
    together = codec.encode(images)
    alone = [codec.encode([im])[0] for im in images]
    reversed_order = list(reversed(codec.encode(list(reversed(images)))))
    for i, codes in enumerate(together):
        assert codes.shape == code_shape(codec) and codes.dtype == np.int64
        assert np.array_equal(codes, alone[i]), f"{kind}: image {i} differs from its fixed-shape reference"
        assert np.array_equal(codes, reversed_order[i]), f"{kind}: image {i} changes with the order of the call"
    assert len({c.tobytes() for c in together}) == N_IMAGES  # six different images, six different code maps
    assert all(0 <= c.min() and c.max() < codec.codebook_size for c in together)


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_every_pass_has_the_fixed_shape_and_dummies_are_zero_images(codecs, kind):
    codec = codecs(kind)
    images = images_for(codec)
    size = codec.proc_size[0]
    zero = np.zeros((size, size, 3), dtype=np.uint8)
    with PassInputs(encoder_of(codec)) as seen:
        codec.encode(images)
        codec.encode([zero])
    batched, zero_pass = seen.inputs[:2], seen.inputs[2]
    assert len(seen.inputs) == 3 and all(x.shape[0] == BATCH for x in seen.inputs)
    assert {tuple(x.shape[-2:]) for x in seen.inputs} == {(size, size)}
    # the last pass of the six: images 4 and 5, then two dummies, exactly what an all-zero image gives
    assert all(torch.equal(batched[1][j], zero_pass[0]) for j in (2, 3))
    assert not torch.equal(batched[1][1], zero_pass[0])


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_pass_log_counts_the_planned_passes(codecs, kind):
    codec = codecs(kind)
    images = images_for(codec)
    plan = plan_passes([codec.proc_size[0]] * N_IMAGES, encode_batch=BATCH, bucket=lambda n: n)
    assert [len(p.members) for p in plan] == [4, 2]
    codec.pass_log.take()
    codec.encode(images)
    log = codec.pass_log.take()
    assert (log.passes, log.items, log.dummies) == (len(plan), N_IMAGES, sum(p.dummies for p in plan)) == (2, 6, 2)
    assert log.sizes == {4: 1, 2: 1} and log.seconds > 0
    assert codec.pass_log.passes == 0  # take() starts a new log


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_self_check_passes_and_decode_works(codecs, kind):
    codec = codecs(kind)
    check = self_check(codec)
    assert check is not None and check.ok and check.encode_batch == BATCH and check.codes > 0
    size = codec.proc_size[0]
    codes = codec.encode(images_for(codec)[:1])[0]
    assert codec.decode(codes).shape == (size, size, 3)


def test_encode_batch_1_runs_one_image_per_pass(codecs):
    codec = codecs("janus")
    images = images_for(codec)
    batched = codec.encode(images)
    codec.set_encode_batch(1)
    try:
        codec.pass_log.take()
        with PassInputs(encoder_of(codec)) as seen:
            single = codec.encode(images)
        log = codec.pass_log.take()
        assert codec.padding_rule() == PADDING_NONE
    finally:
        codec.set_encode_batch(BATCH)
    assert [x.shape[0] for x in seen.inputs] == [1] * N_IMAGES
    assert (log.passes, log.items, log.dummies, log.sizes) == (N_IMAGES, N_IMAGES, 0, {1: N_IMAGES})
    # a different pass shape may move a code near a tie; on these images every code agrees
    assert all(np.array_equal(a, b) for a, b in zip(single, batched))


@pytest.mark.parametrize("kind", ["janus", "vqgan"])  # the cosine and the euclidean search
def test_a_rows_nearest_code_does_not_depend_on_the_other_rows(codecs, kind):
    codec = codecs(kind)
    g = torch.Generator().manual_seed(3)
    n, dim = codec.grid[0] * codec.grid[1], int(codec._net.quantize.embedding.weight.shape[1])
    rows = torch.randn(BATCH * n, dim, generator=g)
    other = rows.clone()
    other[n:] = 1e4 * torch.randn(other[n:].shape, generator=g)  # other images, one of them huge
    assert torch.equal(codec._nearest(rows)[:n], codec._nearest(other)[:n])
