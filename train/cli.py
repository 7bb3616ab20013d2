"""`uti train` and `uti generate`: flags -> TrainConfig / GenerateConfig -> library calls."""

from __future__ import annotations

import argparse
import json

from uti.cli import add_command


def register_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "train", help="train a token LM on tokenized datasets with Ray Train (DDP, or FSDP when asked)",
        example="uti train --data OUT --out RUN --model tiny --num-workers 2 --steps 300 --seq-len 512",
        func=_train,
    )
    p.add_argument("--data", action="append", required=True, metavar="OUT",
                   help="a tokenized dataset folder (OUT of `uti tokenize`); repeat for several")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder: checkpoints, metrics, loss.png")
    p.add_argument("--model", default=None, help="'tiny' (default) or a local Hugging Face causal-LM directory")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (default 2)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default 300)")
    p.add_argument("--seq-len", type=int, default=None, help="packed row length in tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=None, help="packed rows per worker per step (default 4)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3)")
    p.add_argument("--mix", default=None, metavar="TASK=RATIO,...",
                   help="task ratios over a2t,t2a,i2t,t2i,text (default a2t=0.3,t2a=0.25,i2t=0.15,t2i=0.15,text=0.15)")
    p.add_argument("--split", default=None, help="dataset split to train on (default train)")
    p.add_argument("--trainable-rows", action="store_true", default=None,
                   help="train only the non-text embedding and LM-head rows; reports text-loss drift")
    p.add_argument("--resume", action="store_true", default=None, help="continue from RUN's latest checkpoint")
    p.add_argument("--fsdp", action="store_true", default=None, help="shard the model with FSDP instead of DDP")
    p.add_argument("--overlong", choices=("drop", "split"), default=None,
                   help="sequences longer than --seq-len: drop (default) or split audio at frame boundaries "
                        "(counted in the metrics either way)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps (default: last only)")
    p.add_argument("--allow-token-space-mismatch", action="store_true", default=None,
                   help="train on inputs of another token space anyway (recorded in RUN/overrides.json)")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: a local instance)")
    p.add_argument("--seed", type=int, default=None, help="model init, task choice and shard shuffle seed (default 0)")


def _train(args: argparse.Namespace) -> int:
    from train.config import TrainConfig, parse_mix
    from train.runner import train

    fields = ("model", "num_workers", "use_gpu", "steps", "seq_len", "batch_size", "lr", "split", "trainable_rows",
              "resume", "fsdp", "overlong", "checkpoint_every", "allow_token_space_mismatch", "address", "seed")
    kwargs = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.mix is not None:
        kwargs["mix"] = parse_mix(args.mix)
    cfg = TrainConfig(data=tuple(args.data), out=args.out, **kwargs)
    result = train(cfg)
    s = result.summary
    print(f"trained steps {result.start_step + 1}..{result.last_step} in {s.get('wall_s', 0):.1f}s: "
          f"loss {s.get('loss_first', float('nan')):.3f} -> {s.get('loss_last', float('nan')):.3f}, "
          f"{s.get('tokens_per_s', 0):.0f} tokens/s, {s.get('steps_per_s', 0):.2f} steps/s, "
          f"overlong {s.get('overlong', 0)} (dropped {s.get('overlong_dropped', 0)}, split {s.get('overlong_split', 0)})")
    print(f"checkpoint {result.checkpoint}")
    print(f"metrics    {result.run / 'metrics.jsonl'}, {result.run / 'loss.png'}")
    return 0


def register_generate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "generate", help="sample audio/image/text from a trained run and decode it through the codec",
        example="uti generate --checkpoint RUN --mode audio --prompt 'birds at dawn' --out birds.wav",
        func=_generate,
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a run folder (uses its latest checkpoint) or one checkpoints/step-NNNNNN folder")
    p.add_argument("--mode", choices=("audio", "image", "text"), default="audio")
    p.add_argument("--prompt", default="", help="caption to condition on (text mode: the text to continue)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="audio: up to this many tokens, whole frames (default 600); text: default 200; "
                        "image: always the full grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely allowed tokens (0 = all)")
    p.add_argument("--out", required=True, metavar="FILE", help=".wav for audio, .png for image, a text file for text")


def _generate(args: argparse.Namespace) -> int:
    from train.generate import GenerateConfig, generate

    cfg = GenerateConfig(checkpoint=args.checkpoint, out=args.out, mode=args.mode, prompt=args.prompt,
                         max_tokens=args.max_tokens, seed=args.seed, temperature=args.temperature, top_k=args.top_k)
    result = generate(cfg)
    detail = json.dumps({k: v for k, v in result.meta.items() if k != "token_space_id"})
    print(f"wrote {result.path} ({len(result.tokens)} tokens from step {result.step}; {detail})")
    return 0
