"""One typed sample (schema, build_sample, the caption pair) and verify's
decode/retokenize bookkeeping written once. The job-side proof (the fixture makes exactly the samples
the real job writes, byte for byte) is in test_shard_bytes_golden.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sharding.errors import ShardError
from sharding.manifest import ManifestRow


def test_the_sample_schema_has_one_definition():
    import sharding.reader
    import sharding.writer
    import verify.checks
    from sharding import format as fmt

    marked = {f.name: f.metadata.get("schema") for f in dataclasses.fields(fmt.SampleMeta)}
    assert fmt.META_REQUIRED == ("id", "split", "modality", "token_space_id")
    assert fmt.META_COMMON == (*fmt.META_REQUIRED, "captions", "caption_token_lengths")
    assert all(marked[k] for k in fmt.META_COMMON) and not marked["source_sha256"]
    # The writer, the reader and verify's shapes check read the very same objects.
    assert sharding.writer.META_REQUIRED is sharding.reader.META_REQUIRED is fmt.META_REQUIRED
    assert verify.checks.COMMON_META is fmt.META_COMMON and verify.checks.MEDIA_META is fmt.MEDIA_META


def _row(**kw) -> ManifestRow:
    base = dict(id="synth:audio/a", dataset="synth", modality="audio", path="/data/a.wav",
                captions=("a dog", "", "Bäckerei"), split="train")
    return ManifestRow(**{**base, **kw})


def test_build_sample_makes_the_stored_meta(default_tokenizer):
    tok = default_tokenizer
    row = _row()
    text, lengths = tok.encode_captions(row.captions)
    tokens = np.arange(4, dtype=np.uint32)
    codec = {"modality": "audio", "token_space_id": "ignored", "sample_rate": 24000, "n_frames": 1}
    sample = build(row, tok, tokens=tokens, codec_meta=codec, source_sha256="ab" * 32,
                   info={"duration": 0.5})
    meta = sample.meta.to_dict()
    assert sample.id == meta["id"] == row.id and sample.tokens is tokens and np.array_equal(sample.text, text)
    assert meta["token_space_id"] == tok.space.id, "the codec's own token_space_id must not replace the sample's"
    assert meta == {"id": row.id, "split": "train", "modality": "audio", "token_space_id": tok.space.id,
                    "dataset": "synth", "source": "/data/a.wav", "source_sha256": "ab" * 32,
                    "captions": ["a dog", "", "Bäckerei"], "caption_token_lengths": lengths,
                    "sample_rate": 24000, "n_frames": 1, "duration": 0.5}
    assert set(sample.to_dict()) == {"id", "tokens", "text", "meta"}


def build(row, tok, **kw):
    from sharding.format import build_sample

    text, lengths = tok.encode_captions(row.captions)
    return build_sample(row, split=row.split, token_space_id=tok.space.id, text=text, caption_token_lengths=lengths,
                        **kw)


def test_build_sample_refuses_what_would_store_a_wrong_sample(default_tokenizer):
    from sharding.format import build_sample

    tok, row = default_tokenizer, _row()
    with pytest.raises(ShardError, match=r"synth:audio/a.*captions, caption_token_lengths"):
        build_sample(row, split="train", token_space_id=tok.space.id, tokens=np.zeros(0, np.uint32),
                     text=np.zeros(3, np.uint32), caption_token_lengths=[1, 1, 0])
    with pytest.raises(ShardError, match=r"synth:audio/a.*captions collide"):
        build(row, tok, tokens=np.zeros(0, np.uint32), codec_meta={"captions": ["other"]})


def test_captions_encode_and_split_back(default_tokenizer):
    from train.sequences import SequenceError, split_captions as train_split
    from uti.captions import split_captions
    from uti.errors import DecodeRefused

    tok = default_tokenizer
    captions = ["a dog", "", "Bäckerei, \"früh\""]
    text, lengths = tok.encode_captions(captions)
    assert text.dtype == np.uint32 and lengths == [tok.encode_text(c).size for c in captions]
    for parts in (split_captions(text, lengths, what="x"), tok.split_captions(text, lengths, what="x"),
                  train_split(text, lengths, what="x")):
        assert [p.tolist() for p in parts] == [tok.encode_text(c).tolist() for c in captions]
    assert tok.encode_captions([])[0].size == 0 and tok.encode_captions([])[0].dtype == np.uint32
    with pytest.raises(DecodeRefused, match="sample 7: caption_token_lengths"):
        split_captions(text, [1, 1], what="sample 7")
    with pytest.raises(SequenceError, match="re-tokenize"):
        train_split(text, [1, 1], what="sample 7")


def test_unverifiable_reports_each_asked_check_of_each_item():
    from verify.codec_checks import Pick, unverifiable
    from verify.findings import FindingLog

    picks = [Pick(split="train", shard="shard-000000", key=f"k{i}", id=f"d:{i}", modality="audio",
                  decode=dec, retokenize=ret) for i, (dec, ret) in enumerate([(True, True), (True, False), (False, True)])]
    assert [p.checks for p in picks] == [("decode", "retokenize"), ("decode",), ("retokenize",)]
    log = unverifiable(picks, "codec task failed", FindingLog(10))
    assert log.counts == {"decode": 2, "retokenize": 2}
    assert [f.id for f in log.examples["decode"]] == ["d:0", "d:1"]
    assert all(f.shard == "train/shard-000000" and f.detail == "codec task failed"
               for f in log.examples["retokenize"])
