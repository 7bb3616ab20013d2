"""train/: sequence building and packing (pure, fast), the streaming input pipeline, and end-to-end
Ray Train runs on CPU with 2 workers: overfit, exact resume, token-space refusals, trainable rows,
constrained generation decoded to WAV/PNG.

The Ray runs share one module-scoped Ray instance and one overfit run (RUN_A) so the whole file
stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import latest_checkpoint, list_checkpoints, load_tensors
from train.config import TASKS, TrainConfig, parse_mix
from train.generate import Constraint, GenerateConfig, GenerateError, generate
from train.metrics import read_metrics
from train.model import PackedLM, build_model, padded_vocab, text_rows_end, token_losses
from train.runner import OVERRIDES, TrainError, prepare_run, train
from train.sequences import (
    NO_TASK, Packer, SeqStats, SequenceError, Specials, build_doc, check_media, choose_task, pack_row, sample_to_docs,
    split_captions,
)
from train.stream import BatchStream
from train_helpers import other_space, shared_dataset
from uti.errors import ConfigError
from uti.token_space import CodecDescriptor, TokenSpace

# A small token space for the pure tests: no codecs loaded.
SMALL = TokenSpace.build(
    text=CodecDescriptor(modality="text", kind="byte", name="bytes", weights="none", fingerprint="0" * 64,
                         params={"vocab_size": 256}),
    image=CodecDescriptor(modality="image", kind="vqgan", name="t", weights="random:0", fingerprint="1" * 64,
                          params={"codebook_size": 64, "proc_size": [16, 16], "grid": [2, 3]}),
    audio=CodecDescriptor(modality="audio", kind="encodec", name="encodec_24khz", weights="random:0",
                          fingerprint="2" * 64, params={"n_q": 4, "codebook_size": 32, "sample_rate": 24000,
                                                        "frame_rate": 75, "channels": 1, "bandwidth": 3.0}),
)
SP = Specials.from_space(SMALL)
N_Q = 4
MIX = {"a2t": 0.3, "t2a": 0.25, "i2t": 0.15, "t2i": 0.15, "text": 0.15}


def text_ids(s: str) -> np.ndarray:
    return (SMALL.range("text").start + np.frombuffer(s.encode(), dtype=np.uint8)).astype(np.uint32)


def audio_ids(n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = SMALL.audio_levels
    return np.array([levels[k].start + rng.integers(32) for _ in range(n_frames) for k in range(N_Q)], dtype=np.uint32)


def image_ids() -> np.ndarray:
    return (SMALL.range("image").start + np.arange(6)).astype(np.uint32)


def meta_for(modality: str, *, sid: str = "s:0", caps: list[str] = ("a cat",), n_frames: int = 3) -> tuple[dict, np.ndarray, np.ndarray]:
    parts = [text_ids(c) for c in caps]
    text = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    meta = {"id": sid, "modality": modality, "captions": list(caps), "caption_token_lengths": [len(p) for p in parts]}
    if modality == "audio":
        tokens = audio_ids(n_frames)
        meta.update(n_q=N_Q, n_frames=n_frames)
    elif modality == "image":
        tokens = image_ids()
        meta.update(grid=[2, 3])
    else:
        tokens = np.zeros(0, np.uint32)
    return meta, tokens, text


# ---- sequence building (pure) ----------------------------------------------------------------------
def test_doc_layouts_and_loss_masks():
    cap, aud, img = text_ids("hi"), audio_ids(2), image_ids()
    c = cap.tolist()
    a2t = build_doc("a2t", media=aud, caption=cap, sp=SP)
    assert a2t.ids.tolist() == [SP.bos, SP.tags["a2t"], SP.boa, *aud.tolist(), SP.eoa, SP.bot, *c, SP.eot, SP.eos]
    assert a2t.targets.tolist() == [False] * (3 + len(aud) + 1) + [True] * (len(c) + 3)  # no loss on the audio
    t2a = build_doc("t2a", media=aud, caption=cap, sp=SP)
    assert t2a.ids.tolist() == [SP.bos, SP.tags["t2a"], SP.bot, *c, SP.eot, SP.boa, *aud.tolist(), SP.eoa, SP.eos]
    assert t2a.targets.tolist() == [False] * (2 + len(c) + 2) + [True] * (len(aud) + 3)  # no loss on the caption
    i2t = build_doc("i2t", media=img, caption=cap, sp=SP)
    assert i2t.ids.tolist() == [SP.bos, SP.tags["i2t"], SP.boi, *img.tolist(), SP.eoi, SP.bot, *c, SP.eot, SP.eos]
    assert not i2t.targets[: 3 + len(img) + 1].any() and i2t.targets[3 + len(img) + 1:].all()
    t2i = build_doc("t2i", media=img, caption=cap, sp=SP)
    assert t2i.ids.tolist() == [SP.bos, SP.tags["t2i"], SP.bot, *c, SP.eot, SP.boi, *img.tolist(), SP.eoi, SP.eos]
    assert not t2i.targets[: 2 + len(c) + 2].any() and t2i.targets[2 + len(c) + 2:].all()
    text = build_doc("text", media=None, caption=cap, sp=SP)
    assert text.ids.tolist() == [SP.bos, SP.tags["text"], SP.bot, *c, SP.eot, SP.eos]
    assert text.targets.tolist() == [False] + [True] * (len(text) - 1)  # full loss, but <bos> is never a target
    with pytest.raises(SequenceError):
        build_doc("t2a", media=np.zeros(0, np.uint32), caption=cap, sp=SP)


def test_captions_split_by_lengths_and_inconsistency_refused():
    text = np.concatenate([text_ids("ab"), text_ids("cde")])
    assert [p.tolist() for p in split_captions(text, [2, 3], what="x")] == [text_ids("ab").tolist(), text_ids("cde").tolist()]
    with pytest.raises(SequenceError, match="caption_token_lengths"):
        split_captions(text, [2, 2], what="x")
    meta, tokens, _ = meta_for("audio", n_frames=3)
    with pytest.raises(SequenceError, match="n_frames"):
        check_media("audio", tokens[:-1], meta, what="x")  # a partial frame is refused, never trimmed
    with pytest.raises(SequenceError, match="grid"):
        check_media("image", image_ids()[:5], {"grid": [2, 3]}, what="x")


def test_task_choice_follows_modality_and_ratios():
    rng = np.random.default_rng(0)
    picks = {m: Counter(choose_task(m, MIX, rng) for _ in range(4000)) for m in ("audio", "image", "text")}
    assert set(picks["audio"]) == {"a2t", "t2a", "text"} and set(picks["image"]) == {"i2t", "t2i", "text"}
    assert set(picks["text"]) == {"text"}
    # ratios renormalized among the valid tasks: a2t:t2a:text = 0.3:0.25:0.15
    assert abs(picks["audio"]["a2t"] / 4000 - 0.3 / 0.7) < 0.03
    assert choose_task("image", {"a2t": 1.0}, rng) is None
    stats = SeqStats()
    meta, tokens, text = meta_for("image")
    assert sample_to_docs(tokens=tokens, text=text, meta=meta, sp=SP, mix={"a2t": 1.0}, seq_len=64, overlong="drop",
                          seed=0, epoch=0, stats=stats) == []
    assert stats.no_task == 1
    meta, tokens, text = meta_for("audio", caps=[])
    assert sample_to_docs(tokens=tokens, text=text, meta=meta, sp=SP, mix=MIX, seq_len=64, overlong="drop", seed=0,
                          epoch=0, stats=stats) == []
    assert stats.no_caption == 1


def test_task_choice_is_seeded_per_sample_not_per_order():
    def task(sid, epoch=0, seed=0):
        meta, tokens, text = meta_for("audio", sid=sid, caps=["one", "two"])
        return sample_to_docs(tokens=tokens, text=text, meta=meta, sp=SP, mix=MIX, seq_len=256, overlong="drop",
                              seed=seed, epoch=epoch, stats=SeqStats())[0].ids.tolist()

    ids = [f"s:{i}" for i in range(40)]
    first = [task(s) for s in ids]
    assert [task(s) for s in reversed(ids)] == first[::-1]  # reading order does not matter
    assert first != [task(s, epoch=1) for s in ids]  # a new epoch draws again
    assert first != [task(s, seed=1) for s in ids]


def test_packing_is_greedy_pads_never_targets_and_positions_restart():
    docs = [build_doc("text", media=None, caption=text_ids("x" * n), sp=SP) for n in (10, 20, 5, 30)]  # 15,25,10,35
    packer = Packer(seq_len=50, pad_id=SP.pad)
    for d in docs:
        packer.add(d)
    packer.flush()
    rows = [packer.pop_row(), packer.pop_row()]
    assert packer.pop_row() is None
    assert [r.n_docs for r in rows] == [3, 1]  # 15+25+10 = 50 fills a row exactly; 35 starts the next
    r0, r1 = rows
    assert r0.n_pad == 0 and r1.n_pad == 15
    assert not r1.targets[35:].any() and (r1.input_ids[35:] == SP.pad).all() and (r1.task_ids[35:] == NO_TASK).all()
    assert r0.position_ids.tolist() == list(range(15)) + list(range(25)) + list(range(10))
    starts = [0, 15, 40]
    assert all(r0.input_ids[s] == SP.bos and not r0.targets[s] for s in starts)  # never predicted across docs
    with pytest.raises(SequenceError, match="exceeds seq_len"):
        packer.add(build_doc("text", media=None, caption=text_ids("y" * 60), sp=SP))
    with pytest.raises(SequenceError):
        pack_row(docs, seq_len=50, pad_id=SP.pad)


def test_packer_state_round_trip():
    packer = Packer(seq_len=40, pad_id=SP.pad)
    for n in (10, 20, 15, 3):
        packer.add(build_doc("text", media=None, caption=text_ids("z" * n), sp=SP))
    state = json.loads(json.dumps(packer.state_dict()))
    other = Packer(seq_len=40, pad_id=SP.pad)
    other.load_state_dict(state)
    packer.flush()
    other.flush()
    while (a := packer.pop_row()) is not None:
        b = other.pop_row()
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.targets, b.targets)
    assert other.pop_row() is None
    with pytest.raises(SequenceError, match="seq-len"):
        Packer(seq_len=41, pad_id=SP.pad).load_state_dict(state)


def test_overlong_docs_are_counted_and_dropped():
    stats = SeqStats()
    for modality, mix in (("audio", {"a2t": 1.0}), ("image", {"t2i": 1.0}), ("text", {"text": 1.0})):
        meta, tokens, text = meta_for(modality, caps=["a long caption " * 3], n_frames=10)
        docs = sample_to_docs(tokens=tokens, text=text, meta=meta, sp=SP, mix=mix, seq_len=40, overlong="drop", seed=0,
                              epoch=0, stats=stats)
        assert docs == []
    assert stats.overlong == 3 and stats.overlong_dropped == 3 and stats.docs == 0
    # with split, images and text are still dropped (a partial grid is meaningless)
    stats = SeqStats()
    for modality, mix in (("image", {"i2t": 1.0}), ("text", {"text": 1.0})):
        meta, tokens, text = meta_for(modality, caps=["a long caption " * 3])
        assert sample_to_docs(tokens=tokens, text=text, meta=meta, sp=SP, mix=mix, seq_len=40, overlong="split",
                              seed=0, epoch=0, stats=stats) == []
    assert stats.overlong == 2 and stats.overlong_dropped == 2


@pytest.mark.parametrize("task", ["a2t", "t2a"])
def test_overlong_audio_is_split_at_frame_boundaries(task):
    n_frames, seq_len = 23, 48
    meta, tokens, text = meta_for("audio", caps=["dogs"], n_frames=n_frames)
    stats = SeqStats()
    docs = sample_to_docs(tokens=tokens, text=text, meta=meta, sp=SP, mix={task: 1.0}, seq_len=seq_len, overlong="split",
                          seed=0, epoch=0, stats=stats)
    assert len(docs) > 1 and stats.overlong == 1 and stats.overlong_split == 1 and stats.split_pieces == len(docs)
    pieces = []
    for d in docs:
        assert len(d) <= seq_len
        ids = d.ids.tolist()
        audio = ids[ids.index(SP.boa) + 1: ids.index(SP.eoa)]
        assert len(audio) % N_Q == 0 and audio  # whole frames only
        for i, t in enumerate(audio):  # frame-major level order survives the cut
            assert t in SMALL.audio_levels[i % N_Q]
        assert text_ids("dogs").tolist() == ids[ids.index(SP.bot) + 1: ids.index(SP.eot)]
        pieces += audio
    assert pieces == tokens.tolist()  # every token in exactly one piece: nothing cut away


def test_config_is_strict():
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"data": ["x"], "out": "r", "stepz": 3})
    with pytest.raises(ConfigError, match="unknown task"):
        parse_mix("a2t=0.5,speech=0.5")
    assert parse_mix("a2t=0.4,t2a=0.3,i2t=0.2,text=0.1") == {"a2t": 0.4, "t2a": 0.3, "i2t": 0.2, "text": 0.1}
    with pytest.raises(ConfigError, match="overlong"):
        TrainConfig(data=("x",), out="r", overlong="truncate")
    cfg = TrainConfig(data=("x",), out="r", mix={"text": 1})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---- model ---------------------------------------------------------------------------------------
def test_tiny_model_padded_vocab_and_block_diagonal_packing():
    model, _ = build_model("tiny", SMALL, seed=0, seq_len=64)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == padded_vocab(SMALL.vocab_size) and rows % 64 == 0 and rows >= SMALL.vocab_size
    again, _ = build_model("tiny", SMALL, seed=0, seq_len=64)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    a = build_doc("text", media=None, caption=text_ids("first doc"), sp=SP)
    b = build_doc("t2i", media=image_ids(), caption=text_ids("second"), sp=SP)
    lm = PackedLM(model).eval()
    packed = pack_row([a, b], seq_len=48, pad_id=SP.pad)
    alone = pack_row([b], seq_len=48, pad_id=SP.pad)
    everything = torch.ones(1, 48, dtype=torch.bool)
    with torch.no_grad():
        lp = lm(torch.as_tensor(packed.input_ids[None]), torch.as_tensor(packed.position_ids[None]), everything)
        la = lm(torch.as_tensor(alone.input_ids[None]), torch.as_tensor(alone.position_ids[None]), everything)
        ce, mask = token_losses(lm, torch.as_tensor(packed.input_ids[None]), torch.as_tensor(packed.position_ids[None]),
                                torch.as_tensor(packed.targets[None]), SMALL.vocab_size)
    # the second doc sees nothing of the first: same logits packed or alone
    assert torch.allclose(lp[len(a): len(a) + len(b)], la[: len(b)], atol=1e-5)
    assert ce.shape[0] == int(packed.targets[1:].sum()) == int(mask.sum())


def test_local_model_dir_is_resized_to_the_token_space(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=1, n_head=2, n_positions=128)).save_pretrained(tmp_path)
    model, info = build_model(str(tmp_path), SMALL, seed=0, seq_len=64)
    assert model.get_input_embeddings().weight.shape[0] == padded_vocab(SMALL.vocab_size)
    assert info["pretrained_vocab"] == 300 and "kept by ID" in info["text_rows"]
    row = pack_row([build_doc("t2i", media=image_ids(), caption=text_ids("x"), sp=SP)], seq_len=32, pad_id=SP.pad)
    ce, _ = token_losses(PackedLM(model), torch.as_tensor(row.input_ids[None]), torch.as_tensor(row.position_ids[None]),
                         torch.as_tensor(row.targets[None]), SMALL.vocab_size)
    assert torch.isfinite(ce).all() and ce.numel() == int(row.targets[1:].sum())
    with pytest.raises(TrainError, match="not 'tiny'"):
        build_model(str(tmp_path / "nope"), SMALL, seed=0, seq_len=64)


def test_generation_constraints():
    padded = padded_vocab(SMALL.vocab_size)
    audio = Constraint("audio", SMALL, max_tokens=N_Q * 3 + 2, padded=padded)
    eoa = SMALL.special("<eoa>")
    assert audio.length == 3 * N_Q  # rounded down to whole frames
    for i in range(audio.length):
        allowed = audio.mask(i).nonzero().flatten().tolist()
        level = SMALL.audio_levels[i % N_Q]
        assert set(allowed) - {eoa} == set(range(level.start, level.end))
        assert (eoa in allowed) == (i > 0 and i % N_Q == 0)  # stop only between whole frames
        assert max(allowed) < SMALL.vocab_size  # padded rows are never sampled
    image = Constraint("image", SMALL, max_tokens=100, padded=padded)
    r = SMALL.range("image")
    assert image.length == 6 and image.mask(3).nonzero().flatten().tolist() == list(range(r.start, r.end))
    with pytest.raises(GenerateError, match="exactly"):
        Constraint("image", SMALL, max_tokens=5, padded=padded)
    with pytest.raises(GenerateError, match="frame"):
        Constraint("audio", SMALL, max_tokens=N_Q - 1, padded=padded)
    # --min-tokens: no <eoa> before that many tokens (rounded up to whole frames), then only between frames
    at_least = Constraint("audio", SMALL, max_tokens=N_Q * 3, padded=padded, min_tokens=N_Q + 1)
    stops = [i for i in range(at_least.length) if eoa in at_least.mask(i).nonzero().flatten().tolist()]
    assert stops == [2 * N_Q]
    with pytest.raises(GenerateError, match="min-tokens"):
        GenerateConfig(checkpoint="RUN", out="x.png", mode="image", min_tokens=5)
    with pytest.raises(GenerateError, match="more than --max-tokens"):
        GenerateConfig(checkpoint="RUN", out="x.wav", min_tokens=10, max_tokens=5)


# ---- real tokenized data, no Ray ----------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory, default_tokenizer):
    return shared_dataset(tmp_path_factory, default_tokenizer)


def test_the_training_dataset_is_what_the_tokenize_job_writes(data, default_space):
    """tests/train_helpers builds OUT through the job's own build_sample and writers: every
    sample carries the stored schema, media samples name their source file and its SHA-256, and the
    dataset-level files are the job's (errors.jsonl, job.json in its format)."""
    import hashlib

    from sharding.format import MEDIA_META, META_COMMON, list_shards
    from sharding.outdir import load_errors, load_job
    from sharding.reader import read_shard

    job = load_job(data)
    assert job["format"] == "uti.job" and job["complete"] and job["token_space_id"] == default_space.id
    assert load_errors(data) == ([], [])
    metas = [s.meta for ref in list_shards(data) for s in read_shard(ref.tar_path, expected_token_space=default_space)]
    assert {m["modality"] for m in metas} == {"audio", "image", "text"} and len(metas) == 16
    for meta in metas:
        assert set(META_COMMON) | {"dataset", "source", "source_sha256"} <= set(meta), meta
        assert set(MEDIA_META[meta["modality"]]) <= set(meta), meta
        if meta["modality"] != "text":
            assert meta["source_sha256"] == hashlib.sha256(Path(meta["source"]).read_bytes()).hexdigest()


def stream_for(data, space, **kw) -> BatchStream:
    cfg = TrainConfig(data=(str(data),), out="unused", **{"seq_len": 512, "batch_size": 2, **kw})
    return BatchStream([{"out": str(data), "token_space_id": space.id}], cfg=cfg, sp=Specials.from_space(space),
                       vocab_size=space.vocab_size, rank=0, world_size=2)


def test_stream_batches_and_exact_resume(data, default_space):
    stream = stream_for(data, default_space)
    for _ in range(5):
        batch = stream.next_batch()
    assert batch["input_ids"].shape == (2, 512) and batch["targets"].any(axis=1).all()
    assert stream.stats.docs > 0 and stream.stats.overlong == 0
    state = json.loads(json.dumps(stream.state_dict()))  # plain data: fits a weights_only checkpoint
    expected = [stream.next_batch() for _ in range(20)]  # crosses shard and epoch boundaries
    resumed = stream_for(data, default_space)
    resumed.load_state_dict(state)
    for a in expected:
        b = resumed.next_batch()
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_stream_counts_overlong_never_truncates(data, default_space):
    stream = stream_for(data, default_space, seq_len=200, mix={"t2a": 1.0, "t2i": 1.0})
    rows = [stream.next_batch() for _ in range(3)]
    s = stream.stats
    # image docs (256 + 9 tokens) never fit, most audio docs do not: counted and dropped, and every
    # sample read is accounted for (trained whole, counted overlong, or no task in the mix: text-only)
    assert s.overlong > 0 and s.overlong == s.overlong_dropped
    assert s.docs + s.overlong + s.no_task == s.samples
    for b in rows:  # what is trained on is whole docs: each row's docs end with <eos> before padding
        for ids, task in zip(b["input_ids"], b["task_ids"]):
            real = ids[task != NO_TASK]
            assert real[-1] == default_space.special("<eos>")
    split = stream_for(data, default_space, seq_len=200, mix={"t2a": 1.0}, overlong="split")
    split.next_batch()
    assert split.stats.overlong_split > 0 and split.stats.split_pieces >= 2 * split.stats.overlong_split


# ---- Ray Train runs -------------------------------------------------------------------------------


STEPS_A = 40
CKPT_A = 35  # the resume test continues from here: the steps it redoes are what it compares


@pytest.fixture(scope="module")
def run_a(data, ray_session, tmp_path_factory):
    """The overfit run, through the CLI: 2 workers, tiny model, checkpoints at CKPT_A and STEPS_A."""
    from uti.cli import main

    run = tmp_path_factory.mktemp("runs") / "A"
    code = main(["train", "--data", str(data), "--out", str(run), "--model", "tiny", "--num-workers", "2",
                 "--steps", str(STEPS_A), "--seq-len", "512", "--batch-size", "4", "--checkpoint-every", str(CKPT_A),
                 "--seed", "0"])
    assert code == 0
    return run


def test_overfit_loss_halves(run_a):
    rows = read_metrics(run_a)
    assert [r["step"] for r in rows] == list(range(1, STEPS_A + 1))
    first = rows[0]["loss"]
    last = np.mean([r["loss"] for r in rows[-10:]])
    assert first > 8.0  # ~ln(vocab) at init
    assert last <= first / 2, f"loss {first:.3f} -> {last:.3f} did not halve"
    assert all(r["tokens_per_s"] > 0 for r in rows)
    seen = {t for r in rows for t in TASKS if r[f"loss_{t}"] is not None}
    assert seen == set(TASKS)  # every task of the mix was trained and has its own loss
    assert (run_a / "loss.png").stat().st_size > 1000
    assert [s for s, _ in list_checkpoints(run_a)] == [CKPT_A, STEPS_A]
    ckpt = latest_checkpoint(run_a)
    for name in ("model.pt", "optimizer.pt", "scheduler.pt", "data-rank00000.pt", "data-rank00001.pt",
                 "token_space.json", "token_space.sha256", "config.json", "run_config.json"):
        assert (ckpt / name).is_file(), name
    assert TokenSpace.load(ckpt).id == TokenSpace.load(run_a).id
    assert all(isinstance(v, torch.Tensor) for v in load_tensors(ckpt / "model.pt").values())
    drift = json.loads((run_a / "text_drift.json").read_text())
    assert drift["heldout_split"] == "valid" and drift["after"]["loss"] < drift["before"]["loss"]


def test_resume_continues_loss_and_data_position(run_a, tmp_path):
    run_b = tmp_path / "B"
    shutil.copytree(run_a, run_b, ignore=shutil.ignore_patterns("ray"))
    shutil.rmtree(run_b / "checkpoints" / f"step-{STEPS_A:06d}")  # as if A had stopped after step CKPT_A
    cfg = TrainConfig.from_dict(json.loads((run_a / "run_config.json").read_text()) | {"out": str(run_b), "resume": True})
    result = train(cfg)
    assert result.start_step == CKPT_A and result.last_step == STEPS_A
    a = {r["step"]: r for r in read_metrics(run_a)}
    b = read_metrics(run_b)
    assert [r["step"] for r in b] == list(range(1, STEPS_A + 1))  # the curve continues, no step twice
    for r in b[CKPT_A:]:
        assert r["batch_crc"] == a[r["step"]]["batch_crc"], f"step {r['step']}: different data"
        assert abs(r["loss"] - a[r["step"]]["loss"]) < 1e-3, f"step {r['step']}: {r['loss']} vs {a[r['step']]['loss']}"


def test_fsdp_matches_ddp(run_a, data, tmp_path):
    """FSDP (FSDP2 on CPU/gloo) trains the same numbers as the DDP run A: same data, same warmup LR."""
    run = tmp_path / "fsdp"
    cfg = TrainConfig.from_dict(json.loads((run_a / "run_config.json").read_text())
                                | {"out": str(run), "steps": 4, "checkpoint_every": 0, "fsdp": True})
    train(cfg)
    a = {r["step"]: r for r in read_metrics(run_a)}
    for r in read_metrics(run):  # steps < warmup_steps: the LR does not depend on the total steps
        assert r["batch_crc"] == a[r["step"]]["batch_crc"]
        assert abs(r["loss"] - a[r["step"]]["loss"]) < 1e-3, (r["step"], r["loss"], a[r["step"]]["loss"])
    sd = load_tensors(latest_checkpoint(run) / "model.pt")  # full, unsharded, plain HF names
    assert sd["model.embed_tokens.weight"].shape[0] == padded_vocab(TokenSpace.load(run).vocab_size)


def test_token_space_mismatch_fails_fast(run_a, data, tmp_path):
    # resume: the checkpoint's token space differs from the data's
    run_c = tmp_path / "C"
    shutil.copytree(run_a, run_c, ignore=shutil.ignore_patterns("ray"))
    ckpt = latest_checkpoint(run_c)
    other = other_space(TokenSpace.load(ckpt))
    other.write(ckpt)
    cfg = TrainConfig.from_dict(json.loads((run_a / "run_config.json").read_text()) | {"out": str(run_c), "resume": True,
                                                                                        "steps": STEPS_A + 10})
    with pytest.raises(TrainError) as err:
        train(cfg)
    data_id = TokenSpace.load(data).id
    assert other.id[:16] in str(err.value) and data_id[:16] in str(err.value)
    # a second input of another token space, on a fresh run; then the explicit override is recorded
    out2 = tmp_path / "OUT2"
    shutil.copytree(data, out2)
    other.write(out2)
    fresh = TrainConfig(data=(str(data), str(out2)), out=str(tmp_path / "D"), num_workers=2)
    with pytest.raises(TrainError, match="--allow-token-space-mismatch") as err:
        prepare_run(fresh)
    assert other.id[:16] in str(err.value) and data_id[:16] in str(err.value)
    prepare_run(TrainConfig(data=(str(data), str(out2)), out=str(tmp_path / "D"), allow_token_space_mismatch=True))
    record = json.loads((tmp_path / "D" / OVERRIDES).read_text())
    assert record[0]["expected"] == data_id and record[0]["found"] == other.id


def test_trainable_rows_leave_text_rows_bit_identical(data, tmp_path):
    """In this process (--num-workers 0): the masks are hooks on the parameters, the same under DDP (whose
    all-reduce of the exact zeros they leave is zeros); test_train_new_user's interrupted run trains
    --trainable-rows on two Ray Train workers."""
    run = tmp_path / "rows"
    cfg = TrainConfig(data=(str(data),), out=str(run), steps=6, seq_len=256, batch_size=2, trainable_rows=True,
                      overlong="split", warmup_steps=2, lr=1e-2, seed=0, num_workers=0)
    train(cfg)
    space = TokenSpace.load(run)
    init, _ = build_model("tiny", space, seed=0, seq_len=256)
    init_sd = init.state_dict()
    trained = load_tensors(latest_checkpoint(run) / "model.pt")
    end = text_rows_end(space)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(trained[name][:end], init_sd[name][:end]), f"{name}: text rows changed"
        assert not torch.equal(trained[name][end:space.vocab_size], init_sd[name][end:space.vocab_size])
    body = [k for k in init_sd if k not in ("model.embed_tokens.weight", "lm_head.weight")]
    assert body and all(torch.equal(trained[k], init_sd[k]) for k in body)
    drift = json.loads((run / "text_drift.json").read_text())
    assert drift["trainable_rows"] and drift["before"]["loss"] is not None and drift["after"]["loss"] is not None
    # seq_len 256 < every audio doc: counted and split; no image doc fits, so i2t/t2i are left out up
    # front (train.census) and no image is drawn for them only to be dropped
    last = read_metrics(run)[-1]
    assert last["overlong"] > 0 and last["overlong_split"] > 0 and last["task_i2t"] == last["task_t2i"] == 0
    assert last["overlong"] == last["overlong_split"] + last["overlong_dropped"]


def test_generate_audio_and_image_decode(run_a, default_tokenizer, tmp_path):
    space = default_tokenizer.space
    wav = generate(GenerateConfig(checkpoint=str(run_a), mode="audio", prompt="birds at dawn", max_tokens=8 * 12,
                                  out=str(tmp_path / "a.wav"), seed=1), tokenizer=default_tokenizer)
    n_q = len(space.audio_levels)
    assert len(wav.tokens) % n_q == 0 and len(wav.tokens) >= n_q
    for i, t in enumerate(wav.tokens.tolist()):
        assert t in space.audio_levels[i % n_q]
    import soundfile as sf

    audio, sr = sf.read(str(wav.path))
    assert sr == default_tokenizer.audio.sample_rate
    assert abs(len(audio) - wav.meta["n_frames"] * default_tokenizer.audio.hop_length) <= default_tokenizer.audio.hop_length
    png = generate(GenerateConfig(checkpoint=str(run_a), mode="image", prompt="a red sun", out=str(tmp_path / "i.png")),
                   tokenizer=default_tokenizer)
    r = space.range("image")
    assert len(png.tokens) == 16 * 16 and all(t in r for t in png.tokens.tolist())
    from PIL import Image

    assert Image.open(png.path).size == tuple(default_tokenizer.image.proc_size)
    assert json.loads(Path(str(png.path) + ".json").read_text())["tokens"] == png.tokens.tolist()


def test_cli_generate_text_and_clear_errors(run_a, tmp_path, capsys):
    from uti.cli import main

    out = tmp_path / "t.txt"
    assert main(["generate", "--checkpoint", str(run_a), "--mode", "text", "--prompt", "a ", "--max-tokens", "20",
                 "--temperature", "0", "--out", str(out)]) == 0
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    r = TokenSpace.load(run_a).range("text")
    assert all(t in r for t in sidecar["tokens"]) and len(sidecar["tokens"]) <= 20
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "R")]) == 2
    assert "token_space" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.wav")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
