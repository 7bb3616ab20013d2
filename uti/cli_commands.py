"""The `uti` subcommands that live in the bottom package: `tokenspace` and `audit`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uti.cli import add_command


def register_tokenspace(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "tokenspace", help="build, show or compare token spaces",
                    example="uti tokenspace build --out ts/ && uti tokenspace show ts/", func=lambda a: a.tokenspace_func(a))
    ts = p.add_subparsers(dest="tokenspace_command", metavar="ACTION")
    ts.required = True
    b = ts.add_parser("build", help="load the codecs of a config and write token_space.json + .sha256")
    b.add_argument("--config", default=None, help="preset name or uti.yaml path (default: the 'default' preset)")
    b.add_argument("--out", required=True, type=Path, help="directory to write into")
    b.add_argument("--force", action="store_true",
                   help="replace a different token space already in --out (e.g. a tokenized dataset's: its shards "
                        "then no longer match it)")
    b.set_defaults(tokenspace_func=_build)
    s = ts.add_parser("show", help="print a token space as a table of ranges")
    s.add_argument("path", type=Path, help="token_space.json or a directory holding it (a dataset OUT, a run)")
    s.add_argument("--json", action="store_true", help="print the canonical JSON instead")
    s.set_defaults(tokenspace_func=_show)
    d = ts.add_parser("diff", help="name what changed between two token spaces (exit 1 when they differ)")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    d.set_defaults(tokenspace_func=_diff)


def _build(args: argparse.Namespace) -> int:
    from uti.config import MODALITIES, load_config
    from uti.token_space import write_token_space
    from uti.tokenizer import UnifiedTokenizer

    config = load_config(args.config)
    tok = UnifiedTokenizer(config)
    outcome = write_token_space(tok.space, args.out, force=args.force)
    print(f"{outcome} {args.out / 'token_space.json'}  id {tok.space.id}")
    for modality in MODALITIES:
        if modality not in config.modalities:
            print(f"note: no {modality} range (the config has no {modality}: codec)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from uti.token_space import TokenSpace

    space = TokenSpace.load(args.path)
    if args.json:
        sys.stdout.write(space.canonical_json().decode() + "\n")
        return 0
    print(format_space(space))
    return 0


def format_space(space) -> str:
    lines = [f"token space {space.id}", f"vocab size  {space.vocab_size}", "",
             f"{'range':<12} {'start':>8} {'end':>8} {'size':>7}  codec"]
    for r in space.ranges:
        modality = r.name.split(".")[0]
        codec = space.codecs.get(modality)
        label = f"{codec.kind} {codec.name} ({codec.weights}, {codec.fingerprint[:10]})" if codec else \
            f"{len(space.specials)} specials"
        lines.append(f"{r.name:<12} {r.start:>8} {r.end - 1:>8} {r.size:>7}  {label}")
    named = [n for n in space.specials if not n.startswith("<reserved_")]
    lines += ["", "specials: " + " ".join(f"{n}={space.specials[n]}" for n in named)]
    return "\n".join(lines)


def _diff(args: argparse.Namespace) -> int:
    from uti.token_space import TokenSpace, diff

    a, b = TokenSpace.load(args.a), TokenSpace.load(args.b)
    changes = diff(a, b)
    if not changes:
        print(f"identical: {a.id}")
        return 0
    print(f"{a.short_id} -> {b.short_id}: {len(changes)} change(s)")
    for c in changes:
        print(f"  {c}")
    return 1


def register_audit(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "audit", help="the Stage-1 audit bundle: token space, determinism, ranges, decode, metrics",
                    example="uti audit --out audit/ --baseline audit-baseline/report.json", func=_audit)
    p.add_argument("--out", required=True, type=Path, help="directory for the bundle")
    p.add_argument("--config", default=None, help="preset name or uti.yaml path (default: 'default')")
    p.add_argument("--assets", type=Path, default=None, help="folder of .wav/.flac and .png/.jpg (default: built-in synthesized assets)")
    p.add_argument("--decode-mode", choices=("deterministic", "diffusion"), default="deterministic")
    p.add_argument("--baseline", type=Path, default=None, help="a previous report.json: gate on its regression limits")


def _audit(args: argparse.Namespace) -> int:
    from uti.audit import format_table, run_audit

    result = run_audit(out=args.out, config=args.config, assets=args.assets, decode_mode=args.decode_mode,
                       baseline=args.baseline)
    print(format_table(result))
    print(f"\nbundle: {args.out}/ (report.json, token_space.json, recon.png, recon.wav, *_tokens.sha256)")
    return 0 if result.passed else 1
