"""The `uti train` / `uti generate` items a new user hits: --use-gpu without GPUs (fail at
once) and Ctrl-C (one stops the run, exit 130, says how to resume), relative paths resolved on the
driver, --resume defaulting to the run's options, warnings and the text-loss report on the console,
EnCodec 48 kHz generation, output suffixes, duplicate --mix tasks, flag names in errors, no
transformers FutureWarning from `uti generate`.

One real `uti train` subprocess (relative paths, a local model, Ctrl-C after its first checkpoint) is
shared by several tests; the in-process runs share one module-scoped local Ray started after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sharding.format import list_shards
from sharding.reader import read_shard
from train.checkpoint import latest_checkpoint, list_checkpoints
from train.config import TrainConfig, TrainError, parse_mix
from train.generate import Constraint, GenerateConfig, GenerateError, audio_meta, decodable_frames, generate
from train.model import padded_vocab
from train.metrics import read_metrics
from train.runner import prepare_run, resource_shortfall, resume_config, train
from tokenize_helpers import wait_for
from train_helpers import make_dataset, shared_dataset
from uti.errors import ConfigError

STEPS_BIG = 1000  # the interrupted run's --steps: never reached


# ---- no Ray ------------------------------------------------------------------------------------
def test_mix_refuses_a_task_given_twice():
    with pytest.raises(ConfigError, match="'a2t' is given twice"):
        parse_mix("a2t=0.5,a2t=0.5")
    with pytest.raises(ConfigError, match="'text' is given twice"):
        parse_mix("a2t=0.4, text=0.1,text=0.2")
    assert parse_mix("a2t=0.5,t2a=0.5") == {"a2t": 0.5, "t2a": 0.5}


def test_config_errors_name_the_flags(tmp_path, capsys):
    from uti.cli import main

    for kwargs, flag in (({"num_workers": -1}, "--num-workers"), ({"seq_len": 8}, "--seq-len"),
                         ({"lr": 0.0}, "--lr"), ({"overlong": "cut"}, "--overlong"), ({"mix": {"x2y": 1.0}}, "--mix")):
        with pytest.raises(ConfigError) as err:
            TrainConfig(data=("d",), out="r", **kwargs)
        assert str(err.value).startswith(flag) and "train." not in str(err.value), str(err.value)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "R"), "--batch-size", "0"]) == 2
    assert "--batch-size: must be >= 1" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "R")]) == 2  # --data is needed unless --resume
    assert "--data" in capsys.readouterr().err


def test_generate_refuses_an_output_suffix_of_another_format(tmp_path, capsys):
    from uti.cli import main

    for mode, bad in (("audio", "x.png"), ("image", "x.wav"), ("text", "x.png"), ("audio", "x")):
        with pytest.raises(GenerateError, match="--out") as err:
            GenerateConfig(checkpoint="RUN", mode=mode, out=str(tmp_path / bad))
        assert {"audio": ".wav", "image": ".png", "text": ".txt"}[mode] in str(err.value)
    for mode, good in (("audio", "x.WAV"), ("image", "x.png"), ("image", "x.jpg"), ("text", "x.txt")):
        GenerateConfig(checkpoint="RUN", mode=mode, out=good)
    # through the CLI: refused before anything is loaded, nothing written
    assert main(["generate", "--checkpoint", str(tmp_path), "--mode", "audio", "--out", str(tmp_path / "x.png")]) == 2
    assert "--mode audio writes .wav" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_resource_shortfall_names_what_is_missing():
    def cfg(**kw):
        return TrainConfig(data=("d",), out="r", **kw)

    msg = resource_shortfall(cfg(use_gpu=True), {"CPU": 2.0, "memory": 4 * 2**30, "node:127.0.0.1": 1.0})
    assert msg.startswith("--use-gpu but this Ray cluster has no GPUs") and "CPU 2, memory 4.0 GiB" in msg
    assert "node:" not in msg
    msg = resource_shortfall(cfg(use_gpu=True, num_workers=4), {"CPU": 8.0, "GPU": 2.0})
    assert "--num-workers 4 needs 4 GPU(s)" in msg and "has 2" in msg
    assert "needs 3 CPU(s)" in resource_shortfall(cfg(num_workers=3), {"CPU": 2.0})
    assert resource_shortfall(cfg(use_gpu=True, num_workers=2), {"CPU": 1.0, "GPU": 2.0}) is None
    assert resource_shortfall(cfg(num_workers=2), {"CPU": 2.0}) is None


# ---- one real `uti train` in a subprocess: relative paths, a local model, one Ctrl-C --------------
@pytest.fixture(scope="module")
def data(tmp_path_factory, default_tokenizer):
    return shared_dataset(tmp_path_factory, default_tokenizer)


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """In a fresh folder holding OUT (the dataset) and llama_tiny (a local HF model whose 300-row
    vocabulary is not the byte text range), run `uti train` with relative paths as a new user would;
    one SIGINT to its process group (what Ctrl-C in a terminal sends) once the first checkpoint exists."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    cwd = tmp_path_factory.mktemp("nu-cwd")
    shutil.copytree(data, cwd / "OUT")
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024)
                     ).save_pretrained(cwd / "llama_tiny")
    args = ["train", "--data", "OUT", "--out", "RUN", "--model", "llama_tiny", "--trainable-rows",
            "--num-workers", "2", "--steps", str(STEPS_BIG), "--checkpoint-every", "2", "--seq-len", "512",
            "--batch-size", "2"]
    env = {k: v for k, v in os.environ.items() if k not in RAY_TRAIN_VARS}  # as a user has it: uti sets them
    proc = subprocess.Popen([sys.executable, "-m", "uti.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        wait_for(lambda: list_checkpoints(cwd / "RUN") or proc.poll() is not None, 420, 0.2, what="the first checkpoint")
        assert proc.poll() is None, f"uti train ended before its first checkpoint: {proc.communicate()}"
        ray_procs = _ray_train_processes(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return {"cwd": cwd, "run": cwd / "RUN", "rc": proc.returncode, "out": out, "err": err,
            "stop_s": time.time() - sent, "ray": ray_procs}


RAY_TRAIN_VARS = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
# What Ray sets in the workers of a job whose runtime env has a worker_process_setup_hook
SETUP_HOOK_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def _ray_train_processes(root: int) -> dict[str, list[dict[str, str]]]:
    """Ray Train's processes below `root` by title, each with the RAY_TRAIN_VARS and SETUP_HOOK_VAR of its
    environment."""
    from reliability.procs import descendants

    found: dict[str, list[dict[str, str]]] = {}
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                title = fh.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as fh:
                items = [item.decode(errors="replace") for item in fh.read().split(b"\0") if b"=" in item]
            env = dict(item.split("=", 1) for item in items)
        except OSError:
            continue
        for name in ("TrainController", "RayTrainWorker", "PreemptionWatcher", "PlacementGroupCleaner", "DatasetManager",
                     "_AutoscalingCoordinatorActor"):
            if title.startswith(f"ray::{name}"):
                found.setdefault(name, []).append({k: env[k] for k in (*RAY_TRAIN_VARS, SETUP_HOOK_VAR) if k in env})
    return found


def test_a_local_run_polls_its_workers_often_and_watches_no_preemption(interrupted):
    """`uti train` on the local Ray it started: the controller and workers look at each other every 0.1 s
    (Ray's 2 s made every run end seconds after its last step), and Ray Train's preemption watcher, one
    more process per run, is left out: a single local node is never drained."""
    procs = interrupted["ray"]
    want = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert len(procs.get("RayTrainWorker", [])) == 2 and procs.get("TrainController"), procs
    assert all(env == want for env in procs["TrainController"] + procs["RayTrainWorker"]), procs
    assert "PreemptionWatcher" not in procs, procs
    # nor the actors Ray Train starts for what a run does not use (train.runner._make_trainer): Ray Data
    # shards (the workers read shards themselves), a placement-group cleaner for a driver that dies
    # uncleanly (Ray takes the local instance it started down with its driver), and the coordinator of
    # autoscaler requests (a local instance has no autoscaler)
    assert "DatasetManager" not in procs and "PlacementGroupCleaner" not in procs, procs
    assert "_AutoscalingCoordinatorActor" not in procs, procs
    # and no job runtime env: the cleaner's log hook (train.ray_hooks) is for a joined cluster only; with any
    # runtime env Ray left the workers it prestarts idle and started a new one for every actor of the run
    # (`want` above holds no SETUP_HOOK_VAR)


def test_one_ctrl_c_stops_training_with_exit_130_and_says_how_to_resume(interrupted):
    r = interrupted
    assert r["rc"] == 130, (r["rc"], r["err"][-3000:])
    step = list_checkpoints(r["run"])[-1][0]
    assert 2 <= step < STEPS_BIG
    assert f"interrupted; `uti train --out {r['run']} --resume` continues from step {step}" in r["err"]
    assert "Traceback" not in r["err"]
    assert r["stop_s"] < 60


def test_relative_model_and_data_paths_are_resolved_on_the_driver(interrupted):
    # the workers loaded ./llama_tiny (a checkpoint exists), and the run recorded absolute paths
    r = interrupted
    saved = json.loads((latest_checkpoint(r["run"]) / "run_config.json").read_text())
    assert saved["model"] == str(r["cwd"] / "llama_tiny") and saved["data"] == [str(r["cwd"] / "OUT")]
    assert saved["out"] == str(r["run"])
    # the model-vocabulary warning reached the console when it arose, not only a worker's log file
    assert "--model " in r["err"] and "300-row vocabulary is not the token space's text range" in r["err"]


def test_a_missing_relative_model_fails_on_the_driver(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainError, match=f"--model {tmp_path / 'llama_nope'}: not 'tiny'"):
        prepare_run(TrainConfig(data=(str(data),), out="RUN", model="llama_nope"))


def test_resume_config_defaults_to_the_run_and_refuses_only_given_changes(interrupted, monkeypatch):
    monkeypatch.chdir(interrupted["cwd"])
    cfg = resume_config("RUN", {"steps": STEPS_BIG + 5})
    assert cfg.resume and cfg.steps == STEPS_BIG + 5 and cfg.seq_len == 512 and cfg.batch_size == 2
    assert cfg.model == str(interrupted["cwd"] / "llama_tiny") and cfg.trainable_rows and cfg.checkpoint_every == 2
    same = resume_config("RUN", {"seq_len": 512, "data": ("OUT",), "model": "llama_tiny", "lr": 1e-3})
    assert same.steps == STEPS_BIG and same.lr == 1e-3  # unchanged fixed flags are fine; --lr may change
    with pytest.raises(TrainError) as err:
        resume_config("RUN", {"seq_len": 256, "batch_size": 2, "mix": parse_mix("a2t=1")})
    msg = str(err.value)
    assert "--seq-len 256 differs from the run's 512" in msg and "--mix a2t=1 differs" in msg
    assert "--batch-size" not in msg  # given, but the same as the run's


# ---- in-process runs on one local Ray (in file order it starts after the subprocess has ended) ----


def test_use_gpu_without_gpus_fails_at_once(data, ray_session, tmp_path, capsys):
    from uti.cli import main

    t0 = time.time()
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "gpu"), "--use-gpu", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--use-gpu but this Ray cluster has no GPUs (resources: CPU " in err, err
    assert "drop --use-gpu" in err and time.time() - t0 < 60


def test_resume_with_only_out_and_steps_prints_warning_and_text_loss(interrupted, ray_session, monkeypatch, capsys):
    from uti.cli import main

    monkeypatch.chdir(interrupted["cwd"])
    step = list_checkpoints("RUN")[-1][0]
    assert main(["train", "--out", "RUN", "--resume", "--steps", str(step + 2)]) == 0
    out = capsys.readouterr().out
    assert [r["step"] for r in read_metrics("RUN")][-1] == step + 2
    assert list_checkpoints("RUN")[-1][0] == step + 2
    # printed at the end of the run, not only in RUN/text_drift.json and the workers' logs
    drift = json.loads(Path("RUN/text_drift.json").read_text())
    assert (f"text-only loss on {drift['heldout_docs']} held-out captions (split valid): "
            f"{drift['before']['loss']:.3f} -> {drift['after']['loss']:.3f}") in out
    assert "--trainable-rows: rows 0.." in out
    assert "warning: --model " in out and "300-row vocabulary" in out
    # a flag that would change the data position is refused, naming the flag
    assert main(["train", "--out", "RUN", "--resume", "--steps", str(step + 4), "--seq-len", "256"]) == 2
    assert "--seq-len 256 differs from the run's 512" in capsys.readouterr().err


# ---- EnCodec 48 kHz: train, then generate audio ----------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer48():
    from uti.config import AudioConfig, load_config
    from uti.tokenizer import UnifiedTokenizer

    config = load_config("default").replace(audio=AudioConfig(model="encodec_48khz", bandwidth=6.0, weights="random:0"))
    return UnifiedTokenizer(config)


@pytest.fixture(scope="module")
def run48(tokenizer48, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("nu-48k")
    data = make_dataset(root / "OUT", tokenizer48, audio_seconds=(0.4, 1.4))  # clips of 1 and 2 segments
    run = root / "RUN"
    # in this process (--num-workers 0): what is tested is the recorded scale and generation, not Ray
    train(TrainConfig(data=(str(data),), out=str(run), num_workers=0, steps=2, seq_len=1024, batch_size=1,
                      warmup_steps=1, eval_texts=2))
    return {"data": data, "run": run}


def test_48khz_run_records_the_training_data_median_scale(run48):
    scales = [s for ref in list_shards(run48["data"]) for sample in read_shard(ref.tar_path, expected_token_space=None)
              if sample.meta["modality"] == "audio" for s in sample.meta["scales"]]
    recorded = json.loads((run48["run"] / "audio_scale.json").read_text())
    assert recorded["segments"] == len(scales) > 8  # some clips have two segments
    assert recorded["scale"] == pytest.approx(float(np.median(scales)))


@pytest.fixture
def one_thread():
    """Token-by-token sampling of a tiny model: on a busy 2-core machine one intra-op thread is several
    times faster than two (measured 5 vs 36 ms per token under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_48khz_generates_audio_decoded_with_per_segment_scales(run48, tokenizer48, tmp_path, one_thread):
    import soundfile as sf

    codec = tokenizer48.audio
    n_q = codec.n_q
    recorded = json.loads((run48["run"] / "audio_scale.json").read_text())["scale"]
    frames = 152  # more than one 1 s segment (150 frames)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = generate(GenerateConfig(checkpoint=str(run48["run"]), mode="audio", prompt="a bell rings",
                                      max_tokens=n_q * frames, temperature=0, out=str(tmp_path / "a.wav")),
                       tokenizer=tokenizer48)
    # transformers 5 renamed the KV-cache argument; passing the old name warns on every `uti generate`
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
    meta = res.meta
    assert len(res.tokens) == meta["n_frames"] * n_q and sum(meta["segment_frames"]) == meta["n_frames"]
    assert codec.expected_frames(meta["n_samples"]) == meta["n_frames"]
    assert meta["scales"] == [recorded] * len(meta["segment_frames"]) and meta["scale_from"].endswith("audio_scale.json")
    wav, sr = sf.read(str(res.path), always_2d=True)
    assert sr == 48000 and wav.shape == (meta["n_samples"], 2)
    # --audio-scale is applied: the same tokens decoded at half that scale are half as loud
    b = generate(GenerateConfig(checkpoint=str(run48["run"]), mode="audio", prompt="a bell rings", max_tokens=n_q * 20,
                                out=str(tmp_path / "b.wav"), audio_scale=0.02), tokenizer=tokenizer48)
    assert b.meta["scales"] == [0.02] * len(b.meta["segment_frames"]) and b.meta["scale_from"] == "--audio-scale"
    half = tokenizer48.decode_audio(b.tokens, b.meta | {"scales": [0.01] * len(b.meta["scales"])}).numpy()
    loud = sf.read(str(b.path), always_2d=True)[0].T
    assert np.abs(half).max() > 0 and np.allclose(loud, 2 * half, atol=2e-4)


def test_48khz_generated_frames_are_laid_out_in_whole_segments(tokenizer48):
    """However many frames the LM stops at, the meta lays them out in the codec's own segments (full
    1 s segments of 150 frames first, as in training) and the tokens decode; the counts EnCodec's
    overlap-add cannot decode (one frame after a full segment) are never a place to stop."""
    codec, space = tokenizer48.audio, tokenizer48.space
    padded = padded_vocab(space.vocab_size)
    for frames, layout in ((1, [1]), (149, [149]), (150, [149, 1]), (152, [150, 2]), (400, [150, 150, 100])):
        meta = audio_meta(tokenizer48, space, n_frames=frames, scale=0.05)
        assert meta["segment_frames"] == layout and meta["scales"] == [0.05] * len(layout)
        assert codec.expected_frames(meta["n_samples"]) == frames
        assert codec.expected_frames(meta["n_samples"] + 1) > frames  # the longest such clip
        assert decodable_frames(codec, frames)
    assert not decodable_frames(codec, 151) and not decodable_frames(codec, 301)
    n_q, eoa = codec.n_q, space.special("<eoa>")
    constraint = Constraint("audio", space, max_tokens=n_q * 151, padded=padded,
                            frames_ok=lambda n: decodable_frames(codec, n))
    assert constraint.length == 150 * n_q  # rounded down to a decodable count
    assert bool(constraint.mask(150 * n_q)[eoa]) and not bool(
        Constraint("audio", space, max_tokens=n_q * 200, padded=padded,
                   frames_ok=lambda n: decodable_frames(codec, n)).mask(151 * n_q)[eoa])
    rng = np.random.default_rng(0)
    for frames in (150, 302):
        ids = np.array([lvl.start + rng.integers(lvl.size) for _ in range(frames) for lvl in space.audio_levels],
                       np.uint32)
        meta = audio_meta(tokenizer48, space, n_frames=frames, scale=0.05)
        assert tuple(tokenizer48.decode_audio(ids, meta).shape) == (2, meta["n_samples"])


# ---- --num-workers 0: the loop in this process (Ray Train's local mode) -----------------------------
def _ray_titles_while(fn) -> tuple[object, set[str]]:
    """fn()'s result, and the titles of this process's descendants seen (every 0.1 s) while it ran."""
    import threading

    from reliability.procs import descendants

    seen: set[str] = set()
    done = threading.Event()

    def watch():
        while not done.wait(0.1):
            for pid in descendants(os.getpid()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        seen.add(fh.read().split(b"\0")[0].decode(errors="replace"))
                except OSError:
                    continue

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        return fn(), seen
    finally:
        done.set()
        thread.join()


def test_zero_workers_train_and_resume_in_this_process_without_ray(data, tmp_path, capfd):
    """`uti train --num-workers 0` runs the loop here (Ray Train's local mode): no Ray is started or joined,
    no Ray Train actor runs, and the run is an ordinary run folder that --resume continues."""
    import ray

    from uti.cli import main

    was_up = ray.is_initialized()  # the session's Ray may be up: the run must neither use nor start one
    run = tmp_path / "RUN"
    args = ["train", "--data", str(data), "--out", str(run), "--num-workers", "0", "--steps", "3", "--seq-len", "512",
            "--batch-size", "2", "--checkpoint-every", "2"]
    code, titles = _ray_titles_while(lambda: main(args))
    out = capfd.readouterr()  # file descriptors: Ray's log handler holds the real stderr
    assert code == 0, out.err
    assert not [t for t in titles if t.startswith(("ray::TrainController", "ray::RayTrainWorker"))], titles
    assert ray.is_initialized() == was_up
    assert "Reported metrics" not in out.err and "Running in local mode" not in out.err  # uti prints its own
    assert "trained steps 1..3" in out.out
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]
    assert json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())["world_size"] == 1
    code, titles = _ray_titles_while(lambda: main(["train", "--out", str(run), "--resume", "--steps", "5"]))
    assert code == 0 and not [t for t in titles if t.startswith("ray::TrainController")]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]


class _Console:
    """A stderr that is not a terminal (ray job submit, nohup, CI), noting for each line whether RUN had a
    checkpoint when it was written."""

    def __init__(self, run: Path):
        self.run = run
        self.lines: list[tuple[str, bool]] = []
        self._part = ""

    def write(self, text: str) -> int:
        *whole, self._part = (self._part + text).split("\n")
        self.lines += [(line, bool(list_checkpoints(self.run))) for line in whole]
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_zero_workers_print_progress_lines_before_the_first_checkpoint(data, tmp_path, monkeypatch):
    """`--num-workers 0` and Ray Train workers are followed by the same driver code (train.progress): rising
    step lines with the loss, tokens/s and an ETA while the run has no checkpoint yet (it makes one at the end)."""
    import re

    from uti.cli import main

    run = tmp_path / "RUN"
    console = _Console(run)
    monkeypatch.setattr(sys, "stderr", console)
    assert main(["train", "--data", str(data), "--out", str(run), "--num-workers", "0", "--steps", "3",
                 "--seq-len", "512", "--batch-size", "2", "--progress-every", "0.000001"]) == 0
    pattern = re.compile(r"uti train: (\d+)/3 steps \(\d+%\)(, loss \d+\.\d{3}, [\d,]+ tokens/s)?, ETA (\S+), "
                         r"\S+ elapsed(; waiting: the workers' first step)?$")
    before = [m for m in (pattern.match(line) for line, ckpt in console.lines if not ckpt and line.startswith("uti train"))]
    assert before and all(before), [line for line, _ in console.lines]  # every line in the format
    steps = [int(m[1]) for m in before]
    assert steps == sorted(steps) and {0, 1, 2} <= set(steps), steps  # rising, while RUN has no checkpoint yet
    assert all(m[2] for m in before if int(m[1]) > 0)  # the loss and tokens/s once a step is done
    assert all(re.fullmatch(r"\d+s|\d+m\d\ds|\d+h\d\dm", m[3]) for m in before if int(m[1]) > 0), steps
    assert before[0][4] and int(before[0][1]) == 0  # the first lines say what they wait for
    assert [s for s, _ in list_checkpoints(run)] == [3]  # the run's only checkpoint: the lines above came before it


def test_zero_workers_refuse_what_needs_ray_or_a_gpu(data, tmp_path, capsys):
    from uti.cli import main

    base = ["train", "--data", str(data), "--out", str(tmp_path / "R"), "--num-workers", "0"]
    assert main(base + ["--address", "127.0.0.1:6379"]) == 2
    assert "--num-workers 0 trains in this process without Ray, so --address has nothing to do" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(base + ["--use-gpu"]) == 2
        assert "--use-gpu with --num-workers 0 but this machine has no CUDA GPU" in capsys.readouterr().err
    assert main(base[:-1] + ["-1"]) == 2
    assert "--num-workers: must be >= 0" in capsys.readouterr().err


def test_zero_workers_one_ctrl_c_stops_with_exit_130_and_says_how_to_resume(data, tmp_path):
    """Ctrl-C reaches the loop itself in this mode: the same exit 130 and resume line as with Ray workers,
    and the run resumes from the checkpoint it names."""
    from uti.cli import main

    run = tmp_path / "RUN"
    args = ["train", "--data", str(data), "--out", str(run), "--num-workers", "0", "--steps", str(STEPS_BIG),
            "--checkpoint-every", "2", "--seq-len", "512", "--batch-size", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "uti.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: list_checkpoints(run) or proc.poll() is not None, 300, 0.2, what="the first checkpoint")
        assert proc.poll() is None, f"uti train ended before its first checkpoint: {proc.communicate()}"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    step = list_checkpoints(run)[-1][0]
    assert f"interrupted; `uti train --out {run} --resume` continues from step {step}" in err
    assert "Traceback" not in err
    assert main(["train", "--out", str(run), "--resume", "--steps", str(step + 1)]) == 0
    assert [r["step"] for r in read_metrics(run)][-1] == step + 1
