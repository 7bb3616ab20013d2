"""Batched exact encode of every audio family (uti.codecs.batching's policy) at encode_batch 4 on CPU,
random weights (`arch: small` where the adapter has it).

Per family, for clips of mixed lengths (five in one bucket: two passes, and others in buckets of their
own): the codes of one call equal each clip encoded alone (a pass of one clip and three dummies) and the
call in reverse order; every forward pass has the shape (4, channels, bucket length); the codes have the
clip's own frame count and decode; the actor's self-check passes; the pass log counts what plan_passes
plans. At encode_batch 1 EnCodec 24 kHz gives what its model gives each clip alone, zero-padded to whole
frames (the encode before batching existed, and what the byte-golden shards hold).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uti.codecs.batching import PADDING_BUCKETS, PADDING_NONE, bucket_frames, plan_passes, self_check
from uti.codecs.hf_common import BatchedAudioCodec, OneClipAudioCodec
from uti.codecs.registry import build_audio_codec
from uti.config import config_from_yaml

BATCH = 4
FAMILIES = {
    "encodec24": "{kind: encodec, model: encodec_24khz}",
    "encodec48": "{kind: encodec, model: encodec_48khz, bandwidth: 6.0}",
    "mimi": "{kind: mimi, arch: small, n_q: 4}",
    "dac": "{kind: dac, model: 24khz, arch: small}",
    "xcodec2": "{kind: xcodec2, arch: small}",
    "snac": "{kind: snac, model: 44khz, arch: small}",
}
# The module each family's forward pass feeds the (padded) audio to, for the shape check.
ENTRY = {"encodec24": "encoder", "encodec48": "encoder", "mimi": "encoder", "dac": "encoder",
         "xcodec2": "acoustic_encoder", "snac": "encoder"}


def config_of(family: str):
    return config_from_yaml(f"text: {{kind: byte}}\naudio: {FAMILIES[family][:-1]}, encode_batch: {BATCH}}}\n")


@pytest.fixture(scope="module")
def codecs():
    built: dict[str, BatchedAudioCodec] = {}

    def get(family: str):
        if family not in built:
            built[family] = build_audio_codec(config_of(family).audio)
        codec = built[family]
        codec.set_encode_batch(BATCH)
        codec.pass_log.take()
        return codec

    return get


def unit_of(codec) -> tuple[int, int]:
    """(samples per padding unit, samples the model adds first): what the bucket rule counts in."""
    if hasattr(codec, "framing"):
        framing = codec.framing()
        return int(framing["pad_to"]), int(framing.get("extra", 0))
    return codec.hop_length, 0


def lengths_for(codec) -> list[int]:
    """Seven clip lengths: five in one bucket (two passes of 4) and two in buckets of their own. SNAC's
    unit is 12288 samples at 44.1 kHz, so its shared bucket is one unit (whole-unit buckets up to 7);
    EnCodec 48 kHz gets an eighth clip of a full segment and a tail in the shared bucket."""
    unit, extra = unit_of(codec)
    if unit > 4096:
        shared, others = [unit, unit // 2, unit - 7, unit - 100, unit - 1], [2 * unit - 2, 3 * unit - 5]
    else:  # bucket 10 holds 9 and 10 units
        shared = [10 * unit, 10 * unit - unit // 2, 9 * unit - 7, 9 * unit, 10 * unit - 1]
        others = [3 * unit - 2, 13 * unit - 5]
    lengths = [n - extra for n in (shared[0], others[0], shared[1], shared[2], others[1], shared[3], shared[4])]
    if getattr(codec, "segment_length", None):
        lengths.append(codec.segment_stride + 10 * unit - 3)
    return lengths


def clips_of(codec, lengths) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    out = []
    for k, n in enumerate(lengths):
        t = torch.arange(n, dtype=torch.float32) / codec.sample_rate
        wave = 0.3 * torch.sin(2 * np.pi * (180 + 70 * k) * t) + 0.05 * torch.randn(n, generator=g)
        out.append(wave.repeat(codec.channels, 1))
    return out


def items_and_bucket(codec, lengths):
    """The lengths of the items the passes take (EnCodec 48 kHz: the clips' segments) and the bucket rule,
    written out from the policy (not from the adapter)."""
    unit, extra = unit_of(codec)
    seg, stride = getattr(codec, "segment_length", None), getattr(codec, "segment_stride", None)
    if seg is None:
        return lengths, lambda n: bucket_frames(-(-(n + extra) // unit)) * unit - extra
    items = [min(seg, n - off) for n in lengths for off in range(0, n, stride)]
    full = -(-seg // codec.hop_length)
    return items, lambda n: min(bucket_frames(-(-n // codec.hop_length)), full) * codec.hop_length


def with_shapes(codec, family, call):
    """call() while recording the input shape of every forward pass into the family's encoder."""
    shapes: list[tuple[int, ...]] = []
    hook = getattr(codec._net, ENTRY[family]).register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        return call(), shapes
    finally:
        hook.remove()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_codes_are_the_fixed_shape_reference(codecs, family):
    codec = codecs(family)
    lengths = lengths_for(codec)
    clips = clips_of(codec, lengths)
    items, bucket = items_and_bucket(codec, lengths)
    together, shapes = with_shapes(codec, family, lambda: codec.encode(clips))
    log = codec.pass_log.take()

    # (d) the passes plan_passes plans, and every one of the shape (4, channels, bucket length)
    plan = plan_passes(items, encode_batch=BATCH, bucket=bucket)
    assert (log.passes, log.items, log.dummies) == (len(plan), len(items), sum(p.dummies for p in plan))
    assert log.sizes == {k: sum(len(p.members) == k for p in plan) for k in {len(p.members) for p in plan}}
    assert log.seconds > 0 and max(log.sizes) == BATCH  # the shared bucket filled a pass
    unit, extra = unit_of(codec)
    model_lengths = sorted(p.length + extra for p in plan)  # X-codec2's extractor adds its sample first
    assert sorted(s[2] for s in shapes) == model_lengths and {s[:2] for s in shapes} == {(BATCH, codec.channels)}
    if family != "encodec48":
        assert (len(plan), sum(p.dummies for p in plan)) == (4, 4 * BATCH - 7)

    # (a) each clip alone (one pass with three dummies), and the clips in reverse order
    alone = [codec.encode([c])[0] for c in clips]
    backwards = list(reversed(codec.encode(list(reversed(clips)))))
    for k, (a, b, c) in enumerate(zip(together, alone, backwards)):
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.codes, c.codes), f"{family} clip {k}"
        assert a.extra == b.extra == c.extra

    # (b) the clip's own frame count, and decode takes the codes
    for clip, enc in zip(clips, together):
        n = clip.shape[1]
        assert enc.n_samples == n and enc.codes.shape == (codec.expected_frames(n), len(codec.layout_spec().pattern))
        assert enc.codes.dtype == np.int64 and enc.codes.flags.c_contiguous
        wav = codec.decode(enc)
        assert wav.shape[0] == codec.channels and n - codec.hop_length <= wav.shape[1] <= n
        assert torch.isfinite(wav).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_self_check_passes_and_the_policy_names_the_padding(codecs, family):
    codec = codecs(family)
    result = self_check(codec)  # (c)
    assert result is not None and result.ok and result.encode_batch == BATCH and result.codes > 0
    rule = codec.padding_rule()
    assert codec.encode_policy().padding == rule and codec.encode_policy().encode_batch == BATCH
    unit, extra = unit_of(codec)
    if family == "encodec48":
        assert rule.startswith("segments:") and "48000" in rule and "150) frames" in rule
    elif (unit, extra) == (codec.hop_length, 0):
        assert rule == PADDING_BUCKETS
    else:  # the rule in samples: X-codec2's extra sample, SNAC's padding unit
        assert rule != PADDING_BUCKETS and f"u * {unit}" in rule and (f"- {extra}" in rule) == bool(extra)
    codec.set_encode_batch(1)
    assert codec.padding_rule() == PADDING_NONE and self_check(codec) is None


def test_encodec24_near_ties_keep_their_codes_in_any_pass(codecs):
    """Clips whose codes are known to flip with the batch size: on the CPU these tests were written on, the
    three 0.3 s clips (one bucket) encoded as a batch of 3 differ from each alone in 7 codes. In passes of
    the fixed shape (4, 1, 24 frames) they do not, whichever clips share the pass."""
    codec = codecs("encodec24")
    g = torch.Generator().manual_seed(5)
    clips = []
    for seconds in (0.05, 0.3, 0.3, 0.301, 0.71, 1.3, 0.29):
        n = int(seconds * codec.sample_rate)
        t = torch.arange(n) / codec.sample_rate
        clips.append((0.3 * torch.sin(2 * np.pi * 300 * t) + 0.1 * torch.randn(n, generator=g))[None])
    together = codec.encode(clips)
    assert codec.pass_log.take().sizes == {4: 1, 1: 3}  # 0.29-0.301 s: one bucket of 24 frames
    shared = clips[1:4] + clips[6:]
    backwards = codec.encode(list(reversed(shared)))[::-1]
    for k, (clip, b) in enumerate(zip(shared, backwards)):
        a = together[[1, 2, 3, 6][k]].codes
        assert np.array_equal(a, codec.encode([clip])[0].codes) and np.array_equal(a, b.codes), f"clip {k}"


def test_encode_batch_1_is_each_clip_alone_at_its_own_length(codecs):
    """(e) EnCodec 24 kHz at encode_batch 1: each clip zero-padded to whole frames through the model's own
    encoder and quantizer, as the encode before batching did for a clip alone, one pass per clip. Two
    clips of one frame count are among them: that encode batched such clips together, and at batch 3
    the last convolution's floats differ from batch 1 here (4e-8), flipping 7 codes of 0.3 s."""
    codec = codecs("encodec24")
    codec.set_encode_batch(1)
    lengths = [7200, 7224, 7001, 320, 1]  # 7200 and 7224: both 23 frames
    clips = clips_of(codec, lengths)
    got = codec.encode(clips)
    log = codec.pass_log.take()
    assert (log.passes, log.items, log.dummies, log.sizes) == (len(clips), len(clips), 0, {1: len(clips)})
    net, hop = codec._net, codec.hop_length
    with torch.inference_mode():
        for clip, enc in zip(clips, got):
            x = torch.nn.functional.pad(clip[None], (0, -(-clip.shape[1] // hop) * hop - clip.shape[1]))
            want = net.quantizer.encode(net.encoder(x), net.frame_rate, codec.bandwidth)[:, 0].T.numpy()
            assert np.array_equal(enc.codes, want)


def test_an_adapter_with_only_a_one_row_encode_is_batched_exactly(codecs):
    """A plugin subclassing OneClipAudioCodec that implements `_encode_one` alone: every row of a pass goes
    through it at the pass's length, so its codes are still a function of the clip alone."""
    assert OneClipAudioCodec is BatchedAudioCodec
    dac = codecs("dac")

    class OneRowDac(type(dac)):
        _encode_pass = BatchedAudioCodec._encode_pass

        def _encode_one(self, x):
            return type(dac)._encode_pass(self, x)[0]

    one_row = OneRowDac.from_settings(config_of("dac").audio)
    one_row.set_encode_batch(BATCH)
    clips = clips_of(dac, lengths_for(dac)[:3])  # two in bucket 10, one in bucket 3
    got = one_row.encode(clips)
    assert one_row.pass_log.take().dummies == 2 * BATCH - 3
    assert [e.codes.shape[0] for e in got] == [dac.expected_frames(c.shape[1]) for c in clips]
    assert all(np.array_equal(a.codes, one_row.encode([c])[0].codes) for a, c in zip(got, clips))
    assert one_row.fingerprint == dac.fingerprint
