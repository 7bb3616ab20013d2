"""A small tokenized dataset for the training tests, written the way `uti tokenize` writes OUT:
token_space.json(+.sha256), shards/{split}/shard-NNNNNN.tar/.json and job.json with the codec config.

Built with the default UnifiedTokenizer (EnCodec 24 kHz random weights, n_q=8; VQ 16x16 grid; byte
text) and sharding.writer.write_shard, so the samples are real codec tokens with real meta.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sharding.writer import write_shard
from uti.assets import synth_audio, synth_image
from uti.token_space import CodecDescriptor, TokenSpace

AUDIO_CAPTIONS = [
    ["a low hum"], ["birds at dawn", "chirping birds"], ["a door slams"], ["rain on a roof", "steady rain"],
    ["a dog barks"], ["wind in trees"], ["a bell rings", "one bell"], ["water drips"],
]
IMAGE_CAPTIONS = [["a red sun"], ["green hills", "a field"], ["a blue sky"], ["three boxes"]]
TEXT_ONLY = ["hello there", "the quick fox"]
HELDOUT = ["a quiet room", "a cat meows"]


def _ids(tok, caps: list[str]) -> tuple[np.ndarray, list[int]]:
    parts = [tok.encode_text(c) for c in caps]
    return (np.concatenate(parts).astype(np.uint32) if parts else np.zeros(0, np.uint32)), [len(p) for p in parts]


def _meta(tok, *, id: str, split: str, modality: str, caps: list[str], lengths: list[int], extra: dict) -> dict:
    return {"id": id, "split": split, "modality": modality, "token_space_id": tok.space.id, "captions": caps,
            "caption_token_lengths": lengths, **{k: v for k, v in extra.items() if k not in ("modality", "token_space_id")}}


def make_dataset(out: str | Path, tok, *, n_shards: int = 2, audio_seconds: tuple[float, float] = (0.3, 0.6)) -> Path:
    """8 audio clips, 4 images and 2 text-only samples in `n_shards` train shards (modalities spread
    over shards so every rank sees each), plus a 'valid' shard of text-only held-out captions."""
    out = Path(out)
    sr = tok.audio.sample_rate
    kinds = ("tone", "chirp", "noise", "speechlike")
    samples: list[dict] = []
    secs = np.linspace(audio_seconds[0], audio_seconds[1], len(AUDIO_CAPTIONS))
    clips = [tok.prepare_audio(synth_audio(kinds[i % 4], seconds=float(secs[i]), sample_rate=sr, seed=i), sr)
             for i in range(len(AUDIO_CAPTIONS))]
    for i, ((ids, meta), caps) in enumerate(zip(tok.encode_audios(clips), AUDIO_CAPTIONS)):
        text, lengths = _ids(tok, caps)
        sid = f"test-audio:{i:03d}"
        samples.append({"id": sid, "tokens": ids, "text": text,
                        "meta": _meta(tok, id=sid, split="train", modality="audio", caps=caps, lengths=lengths, extra=meta)})
    images = [synth_image(size=tok.image.proc_size[0], seed=i) for i in range(len(IMAGE_CAPTIONS))]
    for i, ((ids, meta), caps) in enumerate(zip(tok.encode_images(images), IMAGE_CAPTIONS)):
        text, lengths = _ids(tok, caps)
        sid = f"test-image:{i:03d}"
        samples.append({"id": sid, "tokens": ids, "text": text,
                        "meta": _meta(tok, id=sid, split="train", modality="image", caps=caps, lengths=lengths, extra=meta)})
    for i, cap in enumerate(TEXT_ONLY):
        text, lengths = _ids(tok, [cap])
        sid = f"test-text:{i:03d}"
        samples.append({"id": sid, "tokens": np.zeros(0, np.uint32), "text": text,
                        "meta": _meta(tok, id=sid, split="train", modality="text", caps=[cap], lengths=lengths, extra={})})
    for k in range(n_shards):
        write_shard(out, split="train", shard=f"shard-{k:06d}", token_space=tok.space, samples=samples[k::n_shards])
    held = []
    for i, cap in enumerate(HELDOUT):
        text, lengths = _ids(tok, [cap])
        sid = f"test-heldout:{i:03d}"
        held.append({"id": sid, "tokens": np.zeros(0, np.uint32), "text": text,
                     "meta": _meta(tok, id=sid, split="valid", modality="text", caps=[cap], lengths=lengths, extra={})})
    write_shard(out, split="valid", shard="shard-000000", token_space=tok.space, samples=held)
    tok.space.write(out)
    (out / "job.json").write_text(json.dumps({"config": tok.config.to_dict(), "counts": {"samples": len(samples)}},
                                             indent=2, sort_keys=True))
    return out


def other_space(space: TokenSpace) -> TokenSpace:
    """A valid token space that differs from `space` only in the image codec's weights fingerprint
    (what re-tokenizing with other image weights gives)."""
    image = space.codecs["image"]
    changed = CodecDescriptor(modality="image", kind=image.kind, name=image.name, weights="random:1",
                              fingerprint="f" * 64, params=dict(image.params))
    return TokenSpace.build(text=space.codecs["text"], image=changed, audio=space.codecs["audio"],
                            num_reserved=len(space.specials) - 15)
