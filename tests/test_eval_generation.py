"""train.evaluate.generation and train.evaluate.memorization: generation health and memorization for `uti eval`.

The distances and the n-gram share are checked on hand-made sequences (and the run against a brute force);
the sample-rate check on NeuCodec, whose decoder writes 24 kHz from 16 kHz input; end to end, a tiny model
trained in this process on 4 samples (2 clips, 2 images) for many steps is prompted with their captions
through `uti generate`'s sampler: every generation decodes, matches the token space, and is flagged as
memorized with the ID of the sample it copies.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from train.config import TrainConfig
from train.evaluate.generation import (
    GenerationSettings, Generator, check_audio_file, decode_and_check, decode_outcome, expected_audio,
    generation_health, repeated_ngram_share,
)
from train.evaluate.memorization import (
    MemorizationSettings, TrainingSubset, jaccard_per_sample, longest_common_run, memorization, read_training_subset,
)
from train.generate import decodable_frames
from train.runner import train
from sharding.outdir import write_space
from train_helpers import make_samples, other_space, row, write_out, write_png, write_wav
from uti.assets import synth_audio, synth_image
from uti.errors import TokenSpaceMismatch


def subset(*samples) -> TrainingSubset:
    return TrainingSubset.from_samples([f"s:{k}" for k in range(len(samples))], [np.array(s) for s in samples])


# ---- distances on hand-made sequences ---------------------------------------------------------------------------
def test_longest_common_run_backs_off_and_never_crosses_samples():
    # a greedy scan that restarts after the mismatch at [1, 1, 1] finds 2; the run [1, 1, 2] is 3 long
    run = longest_common_run(np.array([1, 1, 2]), subset([1, 1, 1, 2]))
    assert (run.length, run.query_start, run.sample, run.sample_start) == (3, 0, 0, 1)
    # [6, 7] spans the end of one training sample and the start of the next: not a run
    assert longest_common_run(np.array([6, 7]), subset([5, 6], [7, 8])).length == 1
    run = longest_common_run(np.array([9, 3, 4, 5, 9]), subset([1, 2, 3], [0, 3, 4, 5, 6]))
    assert (run.length, run.sample, run.sample_start, run.query_start) == (3, 1, 1, 1)
    assert longest_common_run(np.array([7, 7]), subset([1, 2])).length == 0


def test_longest_common_run_matches_a_brute_force():
    def brute(q, samples):
        return max((k for s in samples for i in range(len(q)) for j in range(len(s))
                    for k in [next((k for k in range(min(len(q) - i, len(s) - j) + 1)
                                    if k == min(len(q) - i, len(s) - j) or q[i + k] != s[j + k]))]), default=0)

    rng = np.random.default_rng(0)
    for _ in range(150):
        samples = [rng.integers(0, 3, rng.integers(1, 12)) for _ in range(rng.integers(1, 4))]
        q = rng.integers(0, 3, rng.integers(1, 12))
        run = longest_common_run(q, subset(*samples))
        assert run.length == brute(q.tolist(), [s.tolist() for s in samples])
        if run.length:
            s = samples[run.sample]
            assert np.array_equal(q[run.query_start:run.query_start + run.length],
                                  s[run.sample_start:run.sample_start + run.length])


def test_jaccard_is_over_token_sets():
    # sets {1,2,3} and {1,2,4}: 2 / 4; over multisets it would be 2 / 6
    jac = jaccard_per_sample(np.array([1, 1, 2, 3]), subset([1, 2, 2, 4], [9], [3, 2, 1]))
    assert jac.tolist() == [0.5, 0.0, 1.0]


def test_memorized_needs_the_share_and_the_minimum_run():
    sub = subset(list(range(100, 120)), list(range(200, 210)))
    gen = np.array([*range(200, 210), *range(300, 310)])  # half of it is sample 1
    flagged = memorization([("g", gen)], sub, MemorizationSettings(run_fraction=0.5, min_run=8)).nearest[0]
    assert (flagged.run, flagged.run_sample_id, flagged.memorized) == (10, "s:1", True)
    assert not memorization([("g", gen)], sub, MemorizationSettings(run_fraction=0.6)).nearest[0].memorized
    assert not memorization([("g", gen)], sub, MemorizationSettings(min_run=11)).nearest[0].memorized


def test_repeated_ngram_share_counts_windows_seen_before():
    a, b, c, d = [1, 1], [2, 2], [3, 3], [4, 4]  # frames of two tokens
    assert repeated_ngram_share(np.array([a, b, a, b, a, b]), 2) == pytest.approx(3 / 5)  # ab ba AB BA AB
    assert repeated_ngram_share(np.array([a, b, c, d, a, b, c, d]), 4) == pytest.approx(1 / 5)
    assert repeated_ngram_share(np.array([a, b, c, d, [1, 2], b, c, d]), 4) == 0.0  # frames compare whole
    assert repeated_ngram_share(np.array([a, a, a]), 4) == 0.0  # fewer frames than one n-gram and one more


# ---- the decoder's output rate ---------------------------------------------------------------------------------
def test_audio_check_uses_the_decoders_output_rate(tmp_path):
    """NeuCodec encodes at 16 kHz and decodes at 24 kHz: the WAV must be at 24 kHz with decoded_samples."""
    import soundfile as sf

    from uti.config import config_from_yaml
    from uti.tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer(config_from_yaml("text: {kind: byte}\naudio: {kind: neucodec, arch: small}\n"))
    codec, layout = tok.audio, tok.space.layout("audio")
    assert (codec.sample_rate, codec.output_sample_rate) == (16000, 24000)
    n_frames = next(n for n in range(25, 60) if decodable_frames(codec, n))
    lo, hi = layout.bounds(n_frames)
    ids = np.random.default_rng(0).integers(lo, hi).astype(np.uint32)
    check = decode_and_check(tok, tok.space, "audio", ids, tmp_path / "g.wav", scale=(1.0, "test"))
    assert check.ok, check.problems
    assert check.found["sample_rate"] == check.expected["sample_rate"] == 24000
    assert check.expected["samples"] == codec.decoded_samples(n_frames * codec.hop_length) > n_frames * codec.hop_length
    wav, _ = sf.read(str(tmp_path / "g.wav"))
    sf.write(str(tmp_path / "at16k.wav"), wav, 16000)  # the encode rate: what a check on sample_rate would accept
    bad = check_audio_file(tmp_path / "at16k.wav", expected_audio(tok.space, codec, n_frames * codec.hop_length))
    assert not bad.ok and "written at 16000 Hz" in bad.problems[0] and "24000 Hz" in bad.problems[0]


def test_a_decode_failure_is_returned_with_its_error_not_raised(default_tokenizer, tmp_path):
    space = default_tokenizer.space
    grid = space.range("image").start + np.arange(255, dtype=np.uint32)  # one cell short of the 16x16 grid
    check, error = decode_outcome(default_tokenizer, space, "image", grid, tmp_path / "g.png", scale=(1.0, "test"))
    assert check is None and error.startswith("DecodeRefused: ") and "255" in error
    assert not (tmp_path / "g.png").exists()


# ---- end to end: a tiny model that memorized 4 samples -------------------------------------------------------
CAPTIONS = {"mem-audio:0": "a low hum", "mem-audio:1": "birds at dawn", "mem-image:0": "a red sun",
            "mem-image:1": "green hills"}


@pytest.fixture(scope="module")
def memorized_run(tmp_path_factory, default_tokenizer):
    """2 clips and 2 images trained t2a/t2i in this process until the loss is near 0 (one intra-op thread:
    several times faster for a tiny model on a busy 2-core machine)."""
    root = tmp_path_factory.mktemp("eval-mem")
    tok, sr = default_tokenizer, default_tokenizer.audio.sample_rate
    rows = [row(sid, modality="audio" if "audio" in sid else "image", split="train", captions=[cap],
                path=(write_wav(root / "src" / f"{k}.wav", synth_audio(("tone", "chirp")[k], seconds=0.25,
                                                                        sample_rate=sr, seed=k), sr)
                      if "audio" in sid else
                      write_png(root / "src" / f"{k}.png", synth_image(size=tok.image.proc_size[0], seed=k))))
            for sid, cap in CAPTIONS.items() for k in [int(sid[-1])]]
    data = write_out(root / "OUT", tok, [("train", make_samples(tok, rows))])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(data=(str(data),), out=str(root / "RUN"), num_workers=0, steps=160, seq_len=320, batch_size=2,
                          warmup_steps=5, mix={"t2a": 1.0, "t2i": 1.0}, eval_texts=0))
        gen = Generator.load(root / "RUN", ["audio", "image"], tokenizer=tok)
        health = {task: generation_health(gen, str(data), "train", task, root / "EVAL",
                                          GenerationSettings(n_prompts=16, temperature=0))
                  for task in ("t2a", "t2i")}
    finally:
        torch.set_num_threads(before)
    return {"data": str(data), "gen": gen, "health": health, "tok": tok, "eval": root / "EVAL"}


def test_generations_decode_and_match_the_token_space(memorized_run):
    tok = memorized_run["tok"]
    for task, mode in (("t2a", "audio"), ("t2i", "image")):
        h = memorized_run["health"][task]
        assert h.failure_rate == 0 and h.failures == [] and h.check_failures == []
        assert sorted(g.prompt.sample_id for g in h.generations) == sorted(s for s in CAPTIONS if mode in s)  # all 2
        assert {g.prompt.caption for g in h.generations} == {c for s, c in CAPTIONS.items() if mode in s}
        for g in h.generations:
            assert g.path.is_file() and g.path.parent == memorized_run["eval"] and g.check.ok
        # a model that copies its training data has the data's lengths
        assert h.length.generated == h.length.data
        d = h.diversity
        assert len(d.distinct_per_level) == len(tok.space.layout(mode).level_ranges)
        assert all(0 < n <= size for n, size in zip(d.distinct_per_level, d.codebook_per_level))
    audio = memorized_run["health"]["t2a"].generations[0]
    assert audio.check.found["sample_rate"] == tok.audio.output_sample_rate
    assert memorized_run["health"]["t2i"].generations[0].check.found["proc_size"] == list(tok.image.proc_size)


def test_generations_from_training_captions_are_flagged_memorized_with_their_ids(memorized_run):
    gen, data = memorized_run["gen"], memorized_run["data"]
    for task, mode in (("t2a", "audio"), ("t2i", "image")):
        h = memorized_run["health"][task]
        sub = read_training_subset(data, "train", gen.space, mode)
        assert sorted(sub.ids) == sorted(s for s in CAPTIONS if mode in s)
        report = memorization([(g.prompt.sample_id, g.tokens) for g in h.generations], sub)
        assert len(report.memorized) == len(h.generations) == 2
        for near in report.nearest:
            assert near.run_sample_id == near.label and near.jaccard_sample_id == near.label, near
            assert near.run_share >= 0.5
        # the control: without its own sample in the subset, a generation is not a copy of the other one
        g = h.generations[0]
        others = TrainingSubset.from_samples([i for i in sub.ids if i != g.prompt.sample_id],
                                             [sub.sample(k) for k, i in enumerate(sub.ids) if i != g.prompt.sample_id])
        assert not memorization([(g.prompt.sample_id, g.tokens)], others).nearest[0].memorized


def test_summaries_are_json_and_another_token_space_is_refused(memorized_run, tmp_path):
    import json
    import shutil

    h = memorized_run["health"]["t2a"]
    line = json.loads(json.dumps(h.summary()))
    assert line["failure_rate"] == 0 and len(line["files"]) == 2 and line["length"]["data"] == h.length.data
    sub = read_training_subset(memorized_run["data"], "train", memorized_run["gen"].space, "audio")
    rep = memorization([(g.prompt.sample_id, g.tokens) for g in h.generations], sub).summary()
    assert sorted(m["training_sample"] for m in json.loads(json.dumps(rep))["memorized"]) == ["mem-audio:0",
                                                                                              "mem-audio:1"]
    other = tmp_path / "OTHER"
    shutil.copytree(memorized_run["data"], other)
    changed = other_space(memorized_run["gen"].space)
    write_space(other, changed)
    with pytest.raises(TokenSpaceMismatch) as err:
        generation_health(memorized_run["gen"], str(other), "train", "t2a", tmp_path / "E")
    assert memorized_run["gen"].space.id[:16] in str(err.value) and changed.id[:16] in str(err.value)
