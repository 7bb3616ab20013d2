"""`uti train` and `uti generate`: flags -> TrainConfig / GenerateConfig -> library calls."""

from __future__ import annotations

import argparse
import json
import sys

from sharding.storage import add_storage_options_flag, configure_storage_options
from uti.cli import add_command
from uti.progress import add_progress_every_flag


def register_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", help="train a token LM on tokenized datasets with Ray Train (DDP, or FSDP when asked)",
        example="uti train --data OUT --out RUN --model tiny --num-workers 2 --steps 300 --seq-len 512",
        func=_train,
    )
    # Every option defaults to None here: `--resume` takes the run's stored value for each option not
    # given, and refuses only given ones that differ (train.runner.resume_config).
    p.add_argument("--data", action="append", default=None, metavar="OUT",
                   help="a tokenized dataset folder (OUT of `uti tokenize`); repeat for several "
                        "(required, except with --resume, which reads it from the run)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, metrics, loss.png")
    p.add_argument("--model", default=None, help="'tiny' (default) or a local Hugging Face causal-LM directory")
    p.add_argument("--num-workers", type=int, default=None,
                   help="Ray Train workers (default 2); 0 trains in this process without starting or joining Ray "
                        "(Ray Train's local mode: for a debugger, and short runs on one machine)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default 300)")
    p.add_argument("--seq-len", type=int, default=None, help="packed row length in tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=None, help="packed rows per worker per step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    p.add_argument("--mix", default=None, metavar="TASK=RATIO,...",
                   help="task ratios over a2t,t2a,i2t,t2i,text (default a2t=0.3,t2a=0.25,i2t=0.15,t2i=0.15,text=0.15)")
    p.add_argument("--split", default=None, metavar="NAME[,NAME...]",
                   help="split to train on: one name for all --data, or one per --data in the same order "
                        "(--split development,train); where a name does not exist its alias is used: train = "
                        "development, val = validation = valid, test = evaluation = eval (default train)")
    p.add_argument("--trainable-rows", action="store_true", default=None,
                   help="train only the non-text embedding and LM-head rows; reports text-loss drift")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue from RUN's latest checkpoint; options not given keep the run's values "
                        "(--steps may grow)")
    p.add_argument("--fsdp", action="store_true", default=None, help="shard the model with FSDP instead of DDP")
    p.add_argument("--overlong", choices=("drop", "split"), default=None,
                   help="sequences longer than --seq-len: drop (default) or split audio at frame boundaries "
                        "(counted in the metrics either way)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps (default: last only)")
    p.add_argument("--allow-token-space-mismatch", action="store_true", default=None,
                   help="train on inputs of another token space anyway (recorded in RUN/overrides.json)")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: a local instance)")
    p.add_argument("--wait-for-resources", action="store_true", default=None,
                   help="when the cluster lacks the CPUs/GPUs for --num-workers, wait (an autoscaler may add "
                        "nodes) instead of failing at once")
    p.add_argument("--seed", type=int, default=None, help="model init, task choice and shard shuffle seed (default 0)")
    p.add_argument("--data-weights", default=None, metavar="W,W,...",
                   help="mix the --data inputs by these proportions (one per --data, same order; normalised): "
                        "each task takes its next sample from the input furthest behind its share, seeded and "
                        "resumable (default: inputs take turns)")
    p.add_argument("--mix-by", choices=("samples", "tokens"), default=None,
                   help="--data-weights are proportions of samples (default) or of tokens (media + captions)")
    p.add_argument("--eval-split", default=None, metavar="NAME[,NAME...]",
                   help="held-out split to evaluate on (one name, or one per --data; aliases as --split): the "
                        "loss per task on every worker, in metrics.jsonl (eval_loss, eval_loss_T) and loss.png")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate every N steps and at the last step (default: the last step only)")
    p.add_argument("--eval-batches", type=int, default=None, metavar="M",
                   help="batches per worker per evaluation, the same ones every time (default 4)")
    p.add_argument("--shuffle-buffer", type=int, default=None, metavar="N",
                   help="samples per input and modality that each worker shuffles among, on top of the seeded "
                        "shard order per epoch (default 128; 1 = shard order only). Kept in checkpoints")
    add_progress_every_flag(p)  # the console's, not the run's: never in run_config.json
    add_storage_options_flag(p)


def _train(args: argparse.Namespace) -> int:
    from train.config import FLAG_FIELDS, TrainConfig, TrainError, TrainInterrupted, parse_mix, parse_weights
    from train.runner import resume_config, train

    configure_storage_options(args.storage_options)  # environment only: never in run_config.json (not a flag field)
    given = {f: getattr(args, f) for f in FLAG_FIELDS if f not in ("mix", "data", "data_weights")
             and getattr(args, f) is not None}
    if args.data_weights is not None:
        given["data_weights"] = parse_weights(args.data_weights)
    if args.mix is not None:
        given["mix"] = parse_mix(args.mix)
    if args.data is not None:
        given["data"] = tuple(args.data)
    if args.resume:
        cfg = resume_config(args.out, given)
    elif args.data is None:
        raise TrainError("--data: give at least one tokenized dataset folder (--data OUT); only --resume reads "
                         "it from the run")
    else:
        cfg = TrainConfig(**given)
    try:
        result = train(cfg, progress_every=args.progress_every)
    except TrainInterrupted as exc:
        print(f"uti train: {exc}", file=sys.stderr)
        return 128 + exc.signum
    s = result.summary
    print(f"trained steps {result.start_step + 1}..{result.last_step} in {s.get('wall_s', 0):.1f}s: "
          f"loss {s.get('loss_first', float('nan')):.3f} -> {s.get('loss_last', float('nan')):.3f}, "
          f"{s.get('tokens_per_s', 0):.0f} tokens/s, {s.get('steps_per_s', 0):.2f} steps/s, "
          f"overlong {s.get('overlong', 0)} (dropped {s.get('overlong_dropped', 0)}, split {s.get('overlong_split', 0)})")
    drift = _drift_line(result.text_drift)
    if drift:
        print(drift)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"checkpoint {result.checkpoint}")
    print(f"metrics    {result.run / 'metrics.jsonl'}, {result.run / 'loss.png'}")
    return 0


def _drift_line(drift: dict | None) -> str | None:
    """The text-only loss on held-out captions before/after (RUN/text_drift.json) as one line."""
    if not drift:
        return None
    before, after = (drift.get(k, {}).get("loss") for k in ("before", "after"))
    if before is None or after is None:
        return None
    frozen = drift.get("frozen_rows") if drift.get("trainable_rows") else None
    rows = f"; --trainable-rows: rows {frozen[0]}..{frozen[1] - 1} frozen" if frozen else ""
    n, split = drift.get("heldout_docs", "?"), drift.get("heldout_split")
    if drift.get("held_out") is False:
        where = f"{n} training captions (split {split}, not held out: {drift.get('not_held_out')})"
    else:
        where = f"{n} held-out captions (split {split})"
    return f"text-only loss on {where}: {before:.3f} -> {after:.3f} ({after - before:+.3f}){rows}"


def register_generate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "generate", help="sample audio/image/text from a trained run and decode it through the codec",
        example="uti generate --checkpoint RUN --mode audio --prompt 'birds at dawn' --out birds.wav",
        func=_generate,
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a run folder (uses its latest checkpoint) or one checkpoints/step-NNNNNN folder")
    p.add_argument("--mode", choices=("audio", "image", "text"), default="audio",
                   help="what to generate: an audio clip for the prompt (.wav), an image (.png) or a text "
                        "continuation of the prompt (.txt)")
    p.add_argument("--prompt", default="", help="caption to condition on (text mode: the text to continue)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="audio: up to this many tokens, whole frames (default 600); text: default 200; "
                        "image: always the full grid")
    p.add_argument("--min-tokens", type=int, default=0,
                   help="audio: no end of clip before this many tokens (whole frames); default 0")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed: the same checkpoint, prompt, flags and seed give the same tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely allowed tokens (0 = all)")
    p.add_argument("--audio-scale", type=float, default=None,
                   help="EnCodec 48 kHz only: the loudness (RMS) scale every generated 1 s segment is decoded with "
                        "(default: the training data's median, measured by `uti train` into RUN/audio_scale.json)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="audio: FILE.wav; image: FILE.png (or .jpg); text: FILE.txt. Also writes FILE.json "
                        "with the tokens and meta")


def _generate(args: argparse.Namespace) -> int:
    from train.generate import GenerateConfig, generate

    cfg = GenerateConfig(checkpoint=args.checkpoint, out=args.out, mode=args.mode, prompt=args.prompt,
                         max_tokens=args.max_tokens, min_tokens=args.min_tokens, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                         audio_scale=args.audio_scale)
    result = generate(cfg)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    detail = json.dumps({k: v for k, v in result.meta.items() if k != "token_space_id"})
    print(f"wrote {result.path} ({len(result.tokens)} tokens from step {result.step}; {detail})")
    return 0
