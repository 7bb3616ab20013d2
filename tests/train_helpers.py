"""Small tokenized datasets for the training tests, written the way `uti tokenize` writes OUT: the samples
are made by the job's own `sharding.format.build_sample` from manifest rows whose media (synthetic WAVs
and PNGs in a `-src` folder beside OUT) are loaded by the job's `sharding.media.load_media` and encoded
in one batch per modality, as the read tasks and codec actors do; shards by `sharding.writer.write_shard`;
errors.jsonl, token_space.json(+.sha256) and job.json by the job's own writers in `sharding.outdir`.

What the tests choose themselves is the shard layout (which samples share a shard), so there is no
plan.json: training never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharding.format import build_sample
from sharding.manifest import ManifestRow
from sharding.media import AudioSpec, load_media
from sharding.outdir import write_errors, write_job, write_space
from sharding.writer import write_shard
from uti.assets import synth_audio, synth_image
from uti.strict import to_dict
from uti.token_space import CodecDescriptor, TokenSpace

AUDIO_CAPTIONS = [
    ["a low hum"], ["birds at dawn", "chirping birds"], ["a door slams"], ["rain on a roof", "steady rain"],
    ["a dog barks"], ["wind in trees"], ["a bell rings", "one bell"], ["water drips"],
]
IMAGE_CAPTIONS = [["a red sun"], ["green hills", "a field"], ["a blue sky"], ["three boxes"]]
TEXT_ONLY = ["hello there", "the quick fox"]
HELDOUT = ["a quiet room", "a cat meows"]


# ---- rows and their media -------------------------------------------------------------------------------
def row(sid: str, *, modality: str, split: str, captions, path: Path | None = None) -> ManifestRow:
    """A manifest row; its dataset is the ID's prefix (`name:key`)."""
    return ManifestRow(id=sid, dataset=sid.split(":", 1)[0], modality=modality, path=str(path) if path else None,
                       captions=tuple(captions), split=split)


def write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> Path:
    """A float WAV: load_media reads back exactly these samples."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(wav, dtype=np.float32), sample_rate, subtype="FLOAT")
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@dataclass(frozen=True)
class Encoded:
    """What the tokenize job makes of one media file: its read task's LoadedMedia and its codec's output."""

    tokens: np.ndarray
    codec_meta: dict
    source_sha256: str
    info: dict


def encode_media(tok, rows: list[ManifestRow]) -> dict[str, Encoded]:
    """row ID -> Encoded for the media rows: load_media, then one codec batch per modality (ray_jobs.actor)."""
    spec = AudioSpec(sample_rate=tok.audio.sample_rate, channels=tok.audio.channels)
    media = {r.id: load_media(r, spec=spec, proc_size=tok.image.proc_size[0], limits=tok.config.limits)
             for r in rows if r.modality != "text"}
    out: dict[str, Encoded] = {}
    for modality, encode in (("audio", tok.encode_audios), ("image", tok.encode_images)):
        ids = [r.id for r in rows if r.modality == modality]
        if ids:
            for sid, (tokens, meta) in zip(ids, encode([media[i].data for i in ids])):
                out[sid] = Encoded(tokens=tokens, codec_meta=meta, source_sha256=media[sid].source_sha256,
                                   info=media[sid].info)
    return out


def make_sample(tok, r: ManifestRow, encoded: Encoded | None = None) -> dict:
    """The stored sample of a row (encoded: its media's encoding; None for a text row), as write_shard takes it."""
    text, lengths = tok.encode_captions(r.captions)
    if encoded is None:
        sample = build_sample(r, split=r.split, token_space_id=tok.space.id, tokens=np.zeros(0, np.uint32), text=text,
                              caption_token_lengths=lengths)
    else:
        sample = build_sample(r, split=r.split, token_space_id=tok.space.id, tokens=encoded.tokens, text=text,
                              caption_token_lengths=lengths, codec_meta=encoded.codec_meta,
                              source_sha256=encoded.source_sha256, info=encoded.info)
    return sample.to_dict()


def make_samples(tok, rows: list[ManifestRow]) -> list[dict]:
    encoded = encode_media(tok, rows)
    return [make_sample(tok, r, encoded.get(r.id)) for r in rows]


# ---- OUT ------------------------------------------------------------------------------------------------------
def write_out(out: str | Path, tok, shards: list[tuple[str, list[dict]]]) -> Path:
    """OUT from (split, samples) per shard (numbered per split in the order given), then errors.jsonl, the token
    space and job.json, through the job's writers. Call once per OUT."""
    out = Path(out)
    numbers: dict[str, int] = {}
    for split, samples in shards:
        k = numbers[split] = numbers.get(split, -1) + 1
        write_shard(out, split=split, shard=f"shard-{k:06d}", token_space=tok.space, samples=samples)
    write_errors(out, [])  # a finished job writes it, empty when nothing failed
    write_space(out, tok.space)
    n = sum(len(s) for _, s in shards)
    write_job(out, {"format": "uti.job", "version": 1, "complete": True, "token_space_id": tok.space.id,
                    "config": to_dict(tok.config), "counts": {"planned": n, "samples": n, "errors": 0}})
    return out


def make_dataset(out: str | Path, tok, *, n_shards: int = 2, audio_seconds: tuple[float, float] = (0.3, 0.6)) -> Path:
    """8 audio clips, 4 images and 2 text-only samples in `n_shards` train shards (modalities spread
    over shards so every rank sees each), plus a 'valid' shard of text-only held-out captions."""
    out = Path(out)
    src = out.with_name(out.name + "-src")
    sr = tok.audio.sample_rate
    kinds = ("tone", "chirp", "noise", "speechlike")
    secs = np.linspace(audio_seconds[0], audio_seconds[1], len(AUDIO_CAPTIONS))
    wavs = [write_wav(src / f"clip{i:03d}.wav", synth_audio(kinds[i % 4], seconds=float(s), sample_rate=sr, seed=i), sr)
            for i, s in enumerate(secs)]
    rows = [row(f"test-audio:{i:03d}", modality="audio", split="train", captions=caps, path=wavs[i])
            for i, caps in enumerate(AUDIO_CAPTIONS)]
    rows += [row(f"test-image:{i:03d}", modality="image", split="train", captions=caps,
                 path=write_png(src / f"image{i:03d}.png", synth_image(size=tok.image.proc_size[0], seed=i)))
             for i, caps in enumerate(IMAGE_CAPTIONS)]
    rows += [row(f"test-text:{i:03d}", modality="text", split="train", captions=[cap])
             for i, cap in enumerate(TEXT_ONLY)]
    samples = make_samples(tok, rows)
    held = make_samples(tok, [row(f"test-heldout:{i:03d}", modality="text", split="valid", captions=[cap])
                              for i, cap in enumerate(HELDOUT)])
    return write_out(out, tok, [("train", samples[k::n_shards]) for k in range(n_shards)] + [("valid", held)])


_SHARED: dict[int, Path] = {}


def shared_dataset(tmp_path_factory, tok) -> Path:
    """make_dataset(tok) with its defaults, made once per session and tokenizer (several modules train on it):
    read it or copy it, never write into it."""
    if id(tok) not in _SHARED:
        _SHARED[id(tok)] = make_dataset(tmp_path_factory.mktemp("train-data") / "OUT", tok)
    return _SHARED[id(tok)]


def other_space(space: TokenSpace) -> TokenSpace:
    """A valid token space that differs from `space` only in the image codec's weights fingerprint
    (what re-tokenizing with other image weights gives)."""
    image = space.codecs["image"]
    changed = CodecDescriptor(modality="image", kind=image.kind, name=image.name, weights="random:1",
                              fingerprint="f" * 64, params=dict(image.params))
    return TokenSpace.build(text=space.codecs["text"], image=changed, audio=space.codecs["audio"],
                            num_reserved=len(space.specials) - 15)


# ---- a set where the caption determines the audio (uti eval's prompt ablation) ---------------------------------
TONE_NAMES = ["a low hum", "a harsh buzz", "total silence", "white noise"]


def tone_clips(sr: int) -> list[np.ndarray]:
    """Four deterministic 80 ms clips a tiny model tells apart: a low sine, a square wave, silence, noise."""
    x = np.arange(int(sr * 0.08)) / sr
    return [0.9 * np.sin(2 * np.pi * 100 * x), 0.9 * np.sign(np.sin(2 * np.pi * 3000 * x)), np.zeros_like(x),
            0.9 * np.random.default_rng(0).uniform(-1, 1, len(x))]


def tone_dataset(out: Path, tok, *, train_copies: int = 4, val_copies: int = 3) -> Path:
    """OUT with splits train and val: each caption of TONE_NAMES paired with its own clip, `copies` times."""
    sr = tok.audio.sample_rate
    wavs = [write_wav(out.parent / f"{out.name}-src" / f"clip{c}.wav", w, sr) for c, w in enumerate(tone_clips(sr))]
    rows = {split: [row(f"tones:{split}-{c}-{j}", modality="audio", split=split, captions=[TONE_NAMES[c]],
                        path=wavs[c]) for c in range(4) for j in range(copies)]
            for split, copies in (("train", train_copies), ("val", val_copies))}
    return write_out(out, tok, [(s, make_samples(tok, r)) for s, r in rows.items()])
