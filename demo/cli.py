"""`uti demo`: flags -> DemoConfig -> demo.run.run_demo."""

from __future__ import annotations

import argparse

from uti.cli import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", func=_run,
                    help="the whole path on built-in sample data: manifest, tokenize, verify, train, generate",
                    example="uti demo --out demo-out")
    p.add_argument("--out", default="demo-out", help="folder for everything the demo makes (default: demo-out)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 200)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (8 clips, 8 images, 20 steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> int:
    from demo.run import QUICK, DemoConfig, format_summary, run_demo

    kwargs = dict(QUICK) if args.quick else {}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    summary = run_demo(DemoConfig(out=args.out, progress=not args.no_progress, **kwargs))
    print(format_summary(summary))
    return 0
