"""An audio-only dataset whose every clip is 32 EnCodec frames (32 x 8 = 256 tokens, exactly the default
16x16 image grid), in one split only (`development`, as Clotho names its training split), trained in this
process (--num-workers 0). What a sample is comes from its meta, never from its token count; the text
drift check says it is not held out when OUT has no other split; a resume with more steps keeps the LR
schedule continuous; `uti generate` of a modality the run never trained on says so.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sharding.errors import ShardError
from sharding.format import list_shards
from sharding.reader import read_shard
from train.census import check_training_input, input_census
from train.config import TrainConfig
from train.metrics import read_metrics
from train.runner import train
from train_helpers import make_samples, row, write_out, write_wav
from uti.assets import synth_audio

CLIPS = 6
FRAMES = 32  # EnCodec 24 kHz: 75 frames/s, 320 samples a frame
STEPS, MORE = 3, 6


@pytest.fixture(scope="module")
def audio_only(tmp_path_factory, default_tokenizer) -> Path:
    tok = default_tokenizer
    assert tok.space.layout("image").expected_len(tok.space.layout("image").shape_meta()) == FRAMES * 8
    root = tmp_path_factory.mktemp("audio-only")
    sr = tok.audio.sample_rate
    seconds = FRAMES / 75
    rows = [row(f"clotho:clip{i}.wav", modality="audio", split="development", captions=[f"sound number {i}"],
                path=write_wav(root / "src" / f"clip{i}.wav",
                               synth_audio("tone", seconds=seconds, sample_rate=sr, seed=i), sr))
            for i in range(CLIPS)]
    samples = make_samples(tok, rows)
    assert all(len(s["tokens"]) == FRAMES * 8 for s in samples)
    return write_out(root / "OUT", tok, [("development", samples[:3]), ("development", samples[3:])])


def _cfg(data: Path, run: Path, **kw) -> TrainConfig:
    return TrainConfig(data=(str(data),), out=str(run), num_workers=0, steps=STEPS, seq_len=512, batch_size=2,
                       warmup_steps=1, eval_texts=4, checkpoint_every=STEPS, **kw)


@pytest.fixture(scope="module")
def run(audio_only, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("audio-only-run") / "RUN"
    train(_cfg(audio_only, out))
    return out


# ---- what a sample is: its meta, via the index ------------------------------------------------------------
def test_the_index_records_each_samples_modality_and_the_census_reads_it(audio_only, default_space):
    refs = list_shards(str(audio_only), "development")
    assert all(r.index["version"] == 3 and r.index["modalities"] == ["audio"] * r.num_samples for r in refs)
    census = input_census(str(audio_only), "development", space=default_space)
    assert census.modalities() == ["audio"] and len(census.sizes["audio"]) == CLIPS
    assert not census.sizes["image"] and all(m == frozenset({"audio"}) for m in census.shard_modalities.values())


def test_default_mix_names_the_image_tasks_as_getting_no_sequences(audio_only):
    lines = check_training_input([str(audio_only)], ["development"], TrainConfig(data=(str(audio_only),), out="x",
                                                                                 seq_len=512))
    named = {t for t in ("a2t", "t2a", "i2t", "t2i", "text") if any(line.startswith(f"task {t}:") for line in lines)}
    assert named == {"i2t", "t2i"}, lines
    assert any("hold no image samples" in line for line in lines)


def test_an_older_index_without_modalities_is_read_from_the_sample_metas(audio_only, tmp_path, default_space,
                                                                         caplog):
    """A version 2 index (written before it recorded modalities): the metas in the tar tell, not the count."""
    import shutil

    from sharding.reader import sample_modalities

    old = tmp_path / "OUT"
    shutil.copytree(audio_only, old)
    for path in (old / "shards" / "development").glob("*.json"):
        index = json.loads(path.read_text())
        del index["modalities"]
        path.write_text(json.dumps(index | {"version": 2}))
    refs = list_shards(str(old), "development")
    assert all(r.index["version"] == 2 for r in refs) and sample_modalities(refs[0]) == ["audio"] * 3
    with caplog.at_level("WARNING", logger="train.census"):
        census = input_census(str(old), "development", space=default_space)
    assert census.modalities() == ["audio"] and len(census.sizes["audio"]) == CLIPS
    assert "2 of 2 shard indexes predate per-sample modalities" in caplog.text


def test_an_index_whose_modality_disagrees_with_the_meta_is_refused(audio_only, tmp_path):
    import shutil

    bad = tmp_path / "OUT"
    shutil.copytree(audio_only, bad)
    path = bad / "shards" / "development" / "shard-000000.json"
    index = json.loads(path.read_text())
    path.write_text(json.dumps(index | {"modalities": ["image"] + index["modalities"][1:]}))
    ref = list_shards(str(bad), "development")[0]
    with pytest.raises(ShardError, match=r"is 'audio' in its meta, 'image' in the index"):
        list(read_shard(ref.tar_path, expected_token_space=None, index=ref.index))


def test_the_audio_only_run_trains_on_audio_tasks_only(run):
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    last = rows[-1]
    assert last["task_i2t"] == 0 and last["task_t2i"] == 0 and last["task_a2t"] + last["task_t2a"] > 0


# ---- the text drift check: no other split, so not held out -------------------------------------------------
def test_drift_on_the_training_split_is_not_called_held_out(audio_only, run):
    from train.cli import _drift_line

    drift = json.loads((run / "text_drift.json").read_text())
    assert drift["heldout_split"] == "development" and drift["held_out"] is False
    assert "no split other than the training split development" in drift["not_held_out"]
    line = _drift_line(drift)
    assert "held-out" not in line and "training captions (split development, not held out:" in line, line


# ---- a resume with more steps: the LR schedule stays continuous ---------------------------------------------
def test_more_steps_on_resume_keep_the_lr_continuous_and_non_increasing(audio_only, run, tmp_path, caplog):
    import shutil

    resumed = tmp_path / "RUN"
    shutil.copytree(run, resumed)
    with caplog.at_level("WARNING", logger="train.runner"):
        train(dataclasses.replace(_cfg(audio_only, resumed), steps=MORE, resume=True))
    lrs = {r["step"]: r["lr"] for r in read_metrics(resumed)}
    assert sorted(lrs) == list(range(1, MORE + 1))
    assert lrs[STEPS + 1] <= lrs[STEPS]  # recomputing the cosine over MORE steps raised it
    assert all(lrs[s + 1] <= lrs[s] for s in range(1, MORE))  # after warmup: never up again
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"the LR schedule stays the one of --steps {STEPS}" in said, said


# ---- generate a modality the run never trained on -----------------------------------------------------------
def test_generate_warns_about_a_modality_the_run_never_trained_on(run, tmp_path, capsys):
    from train.checkpoint import latest_checkpoint, read_trainer_state
    from train.generate import untrained_modality_warning
    from uti.cli import main

    state = read_trainer_state(latest_checkpoint(run))
    assert untrained_modality_warning(state, "audio") is None  # the run trained a2t and t2a
    assert untrained_modality_warning(state, "text") is None
    said = untrained_modality_warning(state, "image")
    assert said and "never trained on image" in said and f"up to step {STEPS}" in said
    assert "never trained to generate audio" in untrained_modality_warning({"metrics": {"task_a2t": 3, "task_t2a": 0}},
                                                                          "audio")
    assert untrained_modality_warning({"metrics": {}}, "audio") is None  # not recorded: nothing to say
    png = tmp_path / "y.png"
    assert main(["generate", "--checkpoint", str(run), "--mode", "image", "--out", str(png)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert png.is_file() and [line for line in err if line.startswith("warning: ")] == [f"warning: {said}"]
    assert json.loads(Path(f"{png}.json").read_text())["warnings"] == [said]
