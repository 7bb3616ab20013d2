"""`uti eval`: a thin CLI over train.evaluate.run.run_eval."""

from __future__ import annotations

import argparse

from uti.cli import add_command

DESCRIPTION = "\n".join([
    "Evaluate a trained run on the held-out split of its tokenized data; write EVAL/report.json and EVAL/report.html.",
    "* held-out loss per task (a2t, t2a, i2t, t2i, text) with bootstrap 95% intervals over samples;",
    "* conditional dependence: each conditional task's loss with its own prompt, another sample's (a seeded "
    "derangement) and an empty one; a gap whose interval includes 0 fails (\"does not use its prompt\"); "
    "retrieval accuracy among K prompts;",
    "* generation health for t2a/t2i: decode failures, the files against the token space, lengths, diversity, and "
    "each generation's nearest training sample (memorized ones are flagged);",
    "* text-only drift against --base-model, read collapse over the run's metrics.jsonl, --baseline gating.",
    "Exit 0: every hard check passed; 1: a hard check failed; 2: an error (named, with the fix). Manual: docs/eval.md",
])


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", help="evaluate a trained run: per-task loss, prompt ablation, generation health",
                    example="uti eval --checkpoint RUN --data OUT --split val --out EVAL", func=_eval,
                    description=DESCRIPTION)
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a run folder (its latest complete checkpoint) or one checkpoints/step-NNNNNN folder")
    p.add_argument("--data", action="append", required=True, metavar="OUT",
                   help="a tokenized dataset folder of the run's token space; repeat for several")
    p.add_argument("--split", default="val", metavar="NAME",
                   help="held-out split to evaluate (default val; val finds validation, test finds evaluation)")
    p.add_argument("--out", required=True, metavar="EVAL", help="report folder: report.json, report.html, generated/")
    p.add_argument("--address", default=None, help="Ray cluster address to join (default: a local instance)")
    p.add_argument("--num-workers", type=int, default=2,
                   help="Ray tasks per stage, each on its share of the split (default 2); 0: in this process")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="fail when a loss rises or a gap shrinks past the limits in FILE (from --write-baseline)")
    p.add_argument("--write-baseline", default=None, metavar="FILE",
                   help="write this evaluation's metrics and default limits to FILE (edit the limits there)")
    p.add_argument("--base-model", default=None, metavar="DIR",
                   help="the pretrained LM the run started from: report the text-only loss drift against it")
    p.add_argument("--max-text-drift", type=float, default=None, metavar="NATS",
                   help="warn when the text-only loss rose more than this over --base-model (default 0.1)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="score a seeded choice of N captioned samples of the split (default 1000; 0: all of them)")
    p.add_argument("--k", type=int, default=None, help="prompts per target for retrieval accuracy (default 10)")
    p.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="generations per task (t2a, t2i) from seeded held-out captions (default 16)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="audio generation limit in tokens (default: the split's longest clip)")
    p.add_argument("--temperature", type=float, default=None, help="generation temperature (default 1.0; 0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely allowed tokens (0 = all)")
    p.add_argument("--train-split", default=None, metavar="NAME[,NAME...]",
                   help="split(s) the generations are compared with for memorization (default: the run's --split)")
    p.add_argument("--memorized-share", type=float, default=None, metavar="F",
                   help="a generation sharing a run of at least this share of its tokens with one training sample "
                        "is memorized (default 0.5)")
    p.add_argument("--seed", type=int, default=None, help="derangement, candidates, prompts, bootstrap (default 0)")
    p.add_argument("--no-plots", action="store_true", help="no matplotlib plots in report.html")


def config_from_args(args: argparse.Namespace):
    from dataclasses import replace

    from train.evaluate.config import EvalConfig

    cfg = EvalConfig(checkpoint=args.checkpoint, data=tuple(args.data), out=args.out, split=args.split,
                     num_workers=args.num_workers, address=args.address, baseline=args.baseline,
                     write_baseline=args.write_baseline, base_model=args.base_model, train_split=args.train_split,
                     plots=not args.no_plots)
    given = {k: v for k, v in {"max_text_drift": args.max_text_drift, "k": args.k, "seed": args.seed}.items()
             if v is not None}
    if args.max_samples is not None:
        given["max_samples"] = args.max_samples or None
    cfg = replace(cfg, **given)
    gen = {k: v for k, v in {"n_prompts": args.prompts, "max_tokens": args.max_tokens, "top_k": args.top_k,
                             "temperature": args.temperature, "seed": args.seed}.items() if v is not None}
    mem = {k: v for k, v in {"run_fraction": args.memorized_share, "seed": args.seed}.items() if v is not None}
    return replace(cfg, generation=replace(cfg.generation, **gen), memorization=replace(cfg.memorization, **mem))


def _eval(args: argparse.Namespace) -> int:
    from train.evaluate.run import run_eval

    return run_eval(config_from_args(args)).exit_code
