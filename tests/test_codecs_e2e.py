"""tokenize -> verify -> train -> generate through the CLI for codecs whose token layouts are not
EnCodec's, each on its `arch: small` architecture with random weights: SNAC 24 kHz (multirate: 1 + 2 +
4 codes per frame of its coarsest level) with Emu3, Mimi (frame-major, 4 levels) with Janus (image grids
of another size than the default VQGAN's), WavTokenizer (one codebook) with Chameleon's VQ, and NeuCodec
(FSQ; 16 kHz in, 24 kHz out) with Janus.

What would be false if a reader assumed frame-major audio (n_q codes per frame): verify's range and
shape checks would fail on every SNAC sample, training would refuse SNAC samples as the wrong
length, and generation would sample 3-token "frames" that never decode. And a SNAC shard whose
codes ARE laid out frame-major (right count, wrong positions) must fail verify's range check.

One tokenized dataset per config (module fixtures, one Ray instance for the module), one run of two
training steps of the tiny model on one worker per dataset, one short generation per modality. The
last two tests check the same rules without Ray on SNAC 44.1 kHz (1+2+4+8 codes per frame, clips
padded to 4 frames).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uti.token_space import TokenSpace
from verify_helpers import make_sources, ray_address, rewrite_shard, shard_with  # noqa: F401

CONFIGS = {
    "snac+emu3": "text: {kind: byte}\naudio: {kind: snac, model: 24khz, arch: small}\nimage: {kind: emu3, arch: small}\n",
    "mimi+janus": "text: {kind: byte}\naudio: {kind: mimi, arch: small, n_q: 4}\nimage: {kind: janus, arch: small}\n",
    "wavtokenizer+chameleon": ("text: {kind: byte}\naudio: {kind: wavtokenizer, arch: small}\n"
                               "image: {kind: chameleon, arch: small}\n"),
    # NeuCodec encodes 16 kHz and decodes 24 kHz: decode, verify and the generated WAV follow the decoder
    "neucodec+janus": "text: {kind: byte}\naudio: {kind: neucodec, arch: small}\nimage: {kind: janus, arch: small}\n",
}
# (layout kind, tokens per frame) of each config's audio
AUDIO_LAYOUT = {"snac+emu3": ("multirate", 7), "mimi+janus": ("frame_major", 4),
                "wavtokenizer+chameleon": ("frame_major", 1), "neucodec+janus": ("fsq", 1)}
N_AUDIO, N_IMAGE = 3, 3


@pytest.fixture(scope="module")
def datasets(ray_address, tmp_path_factory):
    """kind -> OUT of `uti tokenize` (one codec actor) over tests/verify_helpers.make_sources: WAVs at
    several rates and channel counts, PNGs of several sizes, a text row and one corrupt WAV."""
    from sharding.manifest import write_manifest
    from uti.cli import main

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            base = tmp_path_factory.mktemp(kind.replace("+", "_"))
            manifest = base / "manifest.jsonl"
            write_manifest(manifest, make_sources(base / "src", n_audio=N_AUDIO, n_image=N_IMAGE))
            (base / "uti.yaml").write_text(CONFIGS[kind])
            assert main(["tokenize", "--manifest", str(manifest), "--out", str(base / "out"), "--config",
                         str(base / "uti.yaml"), "--address", ray_address, "--num-actors", "1",
                         "--shard-samples", "4", "--no-progress"]) == 0
            built[kind] = base / "out"
        return built[kind]

    return get


@pytest.fixture(scope="module")
def runs(datasets, tmp_path_factory):
    """kind -> RUN: two steps of the tiny model over that dataset, in this process (--num-workers 0: what is
    tested is the codec's tokens through the LM and back, not Ray)."""
    from uti.cli import main

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            run = tmp_path_factory.mktemp("runs") / kind.replace("+", "_")
            assert main(["train", "--data", str(datasets(kind)), "--out", str(run), "--model", "tiny",
                         "--num-workers", "0", "--steps", "2", "--seq-len", "384", "--batch-size", "2",
                         "--seed", "0"]) == 0
            built[kind] = run
        return built[kind]

    return get


def _verify(out: Path, address: str, report: Path) -> dict:
    from uti.cli import main

    main(["verify", str(out), "--address", address, "--decode-fraction", "1", "--retokenize-fraction", "1",
          "--loader-batches", "0", "--report-dir", str(report), "--no-plots"])
    return json.loads((report / "report.json").read_text())


def _check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def _generate(run: Path, tmp: Path, *, mode: str, max_tokens: int | None) -> dict:
    from uti.cli import main

    target = tmp / ("gen.wav" if mode == "audio" else "gen.png")
    args = ["generate", "--checkpoint", str(run), "--mode", mode, "--prompt", "a tone", "--out", str(target)]
    assert main(args + (["--max-tokens", str(max_tokens)] if max_tokens else [])) == 0
    sidecar = json.loads(Path(str(target) + ".json").read_text())
    return {"path": target, "tokens": np.asarray(sidecar["tokens"], dtype=np.int64), "meta": sidecar["meta"]}


def _in_layout(space: TokenSpace, modality: str, tokens: np.ndarray) -> None:
    layout = space.layout(modality)
    assert len(tokens) % layout.tokens_per_frame == 0
    for i, t in enumerate(tokens.tolist()):
        assert t in layout.range_of_position(i), f"position {i}: {t} not in {layout.range_of_position(i).name}"


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_verify_passes_with_decode_and_retokenize(kind, datasets, ray_address, tmp_path):
    out = datasets(kind)
    layout = TokenSpace.load(out).layout("audio")
    assert (layout.kind, layout.tokens_per_frame) == AUDIO_LAYOUT[kind]
    report = _verify(out, ray_address, tmp_path / "verify")
    assert report["ok"], [(c["name"], c["first_failure"]) for c in report["checks"] if c["hard"] and not c["ok"]]
    assert _check(report, "token_ranges")["ok"] and _check(report, "shapes")["ok"]
    decoded = _check(report, "decode")["counts"]
    assert decoded.get("decode.audio.ok") == N_AUDIO and decoded.get("decode.image.ok") == N_IMAGE, decoded
    retok = _check(report, "retokenize")["counts"]
    assert retok.get("retokenize.audio.exact") == N_AUDIO and retok.get("retokenize.image.exact") == N_IMAGE, retok
    books = report["codebooks"]
    assert set(books) == {"image", *(r.name for r in TokenSpace.load(out).audio_levels)}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_train_then_generate_audio_at_the_codec_rate(kind, datasets, runs, tmp_path):
    import soundfile as sf

    space = TokenSpace.load(datasets(kind))
    per = space.layout("audio").tokens_per_frame
    gen = _generate(runs(kind), tmp_path, mode="audio", max_tokens=5 * per + per // 2)
    tokens = gen["tokens"]
    assert 0 < len(tokens) <= 5 * per
    _in_layout(space, "audio", tokens)  # every position holds the level its layout gives it
    assert gen["meta"]["n_frames"] * per == len(tokens)
    wav, rate = sf.read(str(gen["path"]))
    params = space.codecs["audio"].params
    assert gen["meta"]["sample_rate"] == params["sample_rate"]  # the tokens' rate: what encode took
    out_rate = params.get("output_sample_rate", params["sample_rate"])
    assert rate == gen["meta"].get("output_sample_rate", params["sample_rate"]) == out_rate == 24000
    assert params["sample_rate"] == (16000 if kind.startswith("neucodec") else 24000)
    # NeuCodec gives whole 24 kHz frames (a clip's last n % hop samples get no frame); the others the clip
    want = gen["meta"]["n_samples"] if out_rate == params["sample_rate"] else \
        gen["meta"]["n_frames"] * params["hop_length"] * out_rate // params["sample_rate"]
    assert len(wav) == want > 0


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_train_then_generate_image(kind, datasets, runs, tmp_path):
    from PIL import Image

    space = TokenSpace.load(datasets(kind))
    grid = space.layout("image").grid
    gen = _generate(runs(kind), tmp_path, mode="image", max_tokens=None)
    assert len(gen["tokens"]) == grid[0] * grid[1]
    _in_layout(space, "image", gen["tokens"])
    proc = space.codecs["image"].params["proc_size"]
    assert Image.open(gen["path"]).size == (proc[1], proc[0])


def test_snac_laid_out_frame_major_fails_the_range_check(datasets, ray_address, tmp_path):
    """The same codes, as many of them, but position p holding level p % n_q (what a frame-major reader
    assumes): only a range check that follows the multirate layout catches it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(datasets("snac+emu3"), out, ignore=shutil.ignore_patterns("verify"))
    space = TokenSpace.load(out)
    layout = space.layout("audio")
    levels = space.audio_levels
    split, shard, sample = shard_with(out, "audio")

    def frame_major(header, samples):
        for s in samples:
            if s.key == sample.key:
                codes = [c.tolist() for c in layout.level_codes(s.tokens)]
                k = [p % len(levels) for p in range(s.tokens.size)]
                s.tokens = np.asarray([levels[k[p]].start + codes[k[p]][(p // len(levels)) % len(codes[k[p]])]
                                       for p in range(s.tokens.size)], dtype=np.uint32)
                assert layout.first_violation(s.tokens) is not None
        return header, samples

    rewrite_shard(out, split, shard, frame_major)
    report = _verify(out, ray_address, tmp_path / "verify")
    ranges = _check(report, "token_ranges")
    assert not ranges["ok"] and not report["ok"]
    detail = ranges["first_failure"]["detail"]
    assert "multirate" in detail and "of 7" in detail and ranges["first_failure"]["id"] == sample.meta["id"], detail
    assert _check(report, "shapes")["ok"]  # the count is right: only the positions are wrong


# ---- the layout in each reader, without Ray (fast) ---------------------------------------------------------
@pytest.fixture(scope="module")
def snac44():
    """SNAC 44.1 kHz (small): 4 levels, 1+2+4+8 codes per frame, clips padded to 4 frames."""
    from uti.config import config_from_yaml
    from uti.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(config_from_yaml("text: {kind: byte}\naudio: {kind: snac, model: 44khz, arch: small}\n"))


def test_constraint_allows_exactly_the_layout_range_and_stops_at_decodable_frames(snac44):
    import torch

    from train.generate import Constraint, decodable_frames
    from train.model import padded_vocab

    space, codec = snac44.space, snac44.audio
    layout = space.layout("audio")
    assert layout.tokens_per_frame == 15
    ok = [n for n in range(1, 13) if decodable_frames(codec, n)]
    assert ok == [4, 8, 12]  # SNAC pads every clip to 4 frames: other counts are no clip's encoding
    padded = padded_vocab(space.vocab_size)
    c = Constraint("audio", space, max_tokens=15 * 11, padded=padded, frames_ok=lambda n: decodable_frames(codec, n))
    assert c.length == 15 * 8  # 11 frames asked: rounded down to the last decodable count
    eoa = space.special("<eoa>")
    for i in range(c.length + 1):
        allowed = set(torch.nonzero(c.mask(i)).flatten().tolist())
        want = set(range(layout.range_of_position(i).start, layout.range_of_position(i).end)) if i < c.length else set()
        if i in (4 * 15, 8 * 15):
            want.add(eoa)
        assert allowed == want, f"position {i}"
    # whatever is sampled inside the masks decodes: here the highest allowed ID at every position
    ids = np.asarray([int(torch.nonzero(c.mask(i))[-1]) for i in range(c.length)], dtype=np.uint32)
    from train.generate import audio_meta

    wav = snac44.decode_audio(ids, audio_meta(snac44, space, n_frames=8, scale=1.0))
    assert wav.shape[0] == 1 and wav.shape[1] == audio_meta(snac44, space, n_frames=8, scale=1.0)["n_samples"]


def test_sequences_and_census_cut_and_count_whole_layout_frames(snac44):
    from train.census import MediaShape
    from train.sequences import SeqStats, SequenceError, Specials, check_media, sample_to_docs

    space = snac44.space
    sp = Specials.from_space(space)
    assert sp.audio_frame == 15 and MediaShape.of(space).n_q == 15
    clip = snac44.prepare_audio(np.sin(np.arange(44100) / 7.0).astype(np.float32), 44100)
    ids, meta = snac44.encode_audio(clip)
    caption = snac44.encode_text("a hum")
    meta = {**meta, "id": "s:0", "captions": ["a hum"], "caption_token_lengths": [len(caption)]}
    check_media("audio", ids, meta, what="x", tokens_per_frame=sp.audio_frame)
    with pytest.raises(SequenceError, match="15 tokens per frame"):
        check_media("audio", ids[:-4], meta, what="x", tokens_per_frame=sp.audio_frame)
    stats = SeqStats()
    docs = sample_to_docs(tokens=ids, text=caption, meta=meta, sp=sp, mix={"t2a": 1.0}, seq_len=60,
                          overlong="split", seed=0, epoch=0, stats=stats)
    assert len(docs) > 1 and stats.overlong_split == 1
    layout = space.layout("audio")
    boa, eoa = space.special("<boa>"), space.special("<eoa>")
    for d in docs:
        ids_ = d.ids.tolist()
        media = np.asarray(ids_[ids_.index(boa) + 1: ids_.index(eoa)], dtype=np.uint32)
        assert len(media) % 15 == 0 and layout.first_violation(media) is None  # whole frames, levels in place


@pytest.mark.parametrize("section", ["audio: {kind: wavtokenizer, arch: small}", "audio: {kind: neucodec, arch: small}",
                                     "audio: {kind: higgs_audio_v2, arch: small}", "audio: {kind: xcodec, arch: small}",
                                     "image: {kind: chameleon, arch: small}"])
def test_generation_constraint_is_the_layout_range_at_every_position(section):
    """For each transformers codec's layout: the generation mask at position i allows exactly the IDs of
    `range_of_position(i)` (plus the stop token where a clip may end), and nothing after the last."""
    import torch

    from train.generate import Constraint, decodable_frames
    from train.model import padded_vocab
    from uti.config import config_from_yaml
    from uti.tokenizer import UnifiedTokenizer

    tok = UnifiedTokenizer(config_from_yaml(f"text: {{kind: byte}}\n{section}\n"))
    mode = section.split(":")[0]
    space = tok.space
    layout = space.layout(mode)
    padded = padded_vocab(space.vocab_size)
    if mode == "audio":
        per = layout.tokens_per_frame
        c = Constraint("audio", space, max_tokens=per * 6, padded=padded,
                       frames_ok=lambda n: decodable_frames(tok.audio, n))
        stops = {i for i in range(1, c.length + 1) if i % per == 0 and decodable_frames(tok.audio, i // per)}
        stop = space.special("<eoa>")
    else:
        c = Constraint("image", space, max_tokens=layout.grid[0] * layout.grid[1], padded=padded)
        stops, stop = set(), None
    assert c.length == (per * 6 if mode == "audio" else layout.grid[0] * layout.grid[1])
    for i in range(c.length + 1):
        allowed = set(torch.nonzero(c.mask(i)).flatten().tolist())
        want = set(range(layout.range_of_position(i).start, layout.range_of_position(i).end)) if i < c.length else set()
        if i in stops:
            want.add(stop)
        assert allowed == want, f"{section}: position {i}"
