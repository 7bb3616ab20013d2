"""The unified tokenizer: global IDs, meta, and strict refusal of anything decode would have to guess."""

import numpy as np
import pytest
import torch

from uti.assets import synth_audio, synth_image
from uti.errors import DecodeRefused


@pytest.fixture(scope="module")
def audio_item(default_tokenizer):
    tok = default_tokenizer
    clip = tok.prepare_audio(synth_audio("speechlike", seconds=0.8, sample_rate=16000, seed=1), 16000)
    return tok.encode_audio(clip)


@pytest.fixture(scope="module")
def image_item(default_tokenizer):
    return default_tokenizer.encode_image(synth_image(size=64, seed=2))


def test_audio_ids_are_frame_major_on_their_own_levels(default_tokenizer, audio_item):
    tok, (ids, meta) = default_tokenizer, audio_item
    assert ids.dtype == np.uint32 and meta["n_samples"] == 19200 and meta["sample_rate"] == 24000
    assert ids.size == meta["n_frames"] * meta["n_q"]
    grid = ids.reshape(meta["n_frames"], meta["n_q"])
    for k, level in enumerate(tok.space.audio_levels):
        assert ((grid[:, k] >= level.start) & (grid[:, k] < level.end)).all()
    assert meta["token_space_id"] == tok.space.id


def test_prepare_audio_resamples_and_downmixes(default_tokenizer):
    stereo = np.stack([synth_audio("tone", seconds=0.5, sample_rate=44100, seed=0)] * 2)
    x = default_tokenizer.prepare_audio(stereo, 44100)
    assert x.shape == (1, 12000) and x.dtype == torch.float32


def test_decode_audio_round_trip_shape(default_tokenizer, audio_item):
    ids, meta = audio_item
    wav = default_tokenizer.decode_audio(ids, meta)
    assert wav.shape == (1, meta["n_samples"])
    boa, eoa = default_tokenizer.space.special("<boa>"), default_tokenizer.space.special("<eoa>")
    wrapped = np.concatenate([[boa], ids, [eoa]]).astype(np.uint32)
    assert torch.equal(default_tokenizer.decode_audio(wrapped, meta), wav)


def _refused(fn, match):
    with pytest.raises(DecodeRefused, match=match):
        fn()


def test_decode_audio_refuses_every_broken_rule(default_tokenizer, audio_item):
    tok, (ids, meta) = default_tokenizer, audio_item
    space = tok.space
    out_of_range = ids.copy()
    out_of_range[5] = space.vocab_size + 3
    _refused(lambda: tok.decode_audio(out_of_range, meta), "frame 0 level 5")
    wrong_level = ids.copy()
    wrong_level[1] = space.range("audio.l0").start + 7  # level-0 code in level-1's slot
    _refused(lambda: tok.decode_audio(wrong_level, meta), "level 1.*it is in audio.l0")
    text_in_audio = ids.copy()
    text_in_audio[0] = space.range("text").start
    _refused(lambda: tok.decode_audio(text_in_audio, meta), "not in audio.l0")
    _refused(lambda: tok.decode_audio(ids[:-1], meta), "n_frames\\*n_q")
    _refused(lambda: tok.decode_audio(ids, {**meta, "n_frames": meta["n_frames"] + 1}), "tokens, but")
    _refused(lambda: tok.decode_audio(ids, {**meta, "n_samples": meta["n_samples"] * 2}), "give .* frames")
    _refused(lambda: tok.decode_audio(ids, {**meta, "sample_rate": 16000}), "sample_rate")
    _refused(lambda: tok.decode_audio(ids, {**meta, "token_space_id": "f" * 64}), "token_space_id")
    _refused(lambda: tok.decode_audio(ids.astype(np.int64), meta), "uint32")
    boa = space.special("<boa>")
    _refused(lambda: tok.decode_audio(np.concatenate([[boa], ids]).astype(np.uint32), meta), "unbalanced")


def test_decode_image_refuses_every_broken_rule(default_tokenizer, image_item):
    tok, (ids, meta) = default_tokenizer, image_item
    assert ids.size == meta["grid"][0] * meta["grid"][1] == 256
    assert tok.decode_image(ids, meta).shape == (64, 64, 3)
    bad = ids.copy()
    bad[3] = tok.space.range("audio.l0").start
    _refused(lambda: tok.decode_image(bad, meta), "position 3 is outside the image range")
    _refused(lambda: tok.decode_image(ids[:-2], meta), "needs 256")
    _refused(lambda: tok.decode_image(ids, {**meta, "grid": [8, 32]}), "grid")
    eoi = tok.space.special("<eoi>")
    _refused(lambda: tok.decode_image(np.concatenate([ids, [eoi]]).astype(np.uint32), meta), "unbalanced")


def test_text_round_trip_and_range(default_tokenizer):
    tok = default_tokenizer
    ids = tok.encode_text('Bäckerei, "früh"')
    assert ids.dtype == np.uint32 and ids.min() >= tok.space.range("text").start
    assert tok.decode_text(ids) == 'Bäckerei, "früh"'
    _refused(lambda: tok.decode_text(np.array([1], dtype=np.uint32)), "outside the text range")


def test_encode_is_deterministic_per_modality(default_tokenizer):
    tok = default_tokenizer
    clip = tok.prepare_audio(synth_audio("chirp", seconds=1.1, sample_rate=24000, seed=4), 24000)
    assert np.array_equal(tok.encode_audio(clip)[0], tok.encode_audio(clip)[0])
    img = synth_image(size=64, seed=5)
    assert np.array_equal(tok.encode_image(img)[0], tok.encode_image(img)[0])
