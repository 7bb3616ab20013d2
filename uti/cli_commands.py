"""The `uti` subcommands that live in the bottom package: `tokenspace` and `audit`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uti.cli import add_command, add_config_flag


def register_tokenspace(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "tokenspace", help="build, show or compare token spaces",
                    example="uti tokenspace build --out ts/ && uti tokenspace show ts/", func=lambda a: a.tokenspace_func(a))
    ts = p.add_subparsers(dest="tokenspace_command", metavar="ACTION")
    ts.required = True
    b = add_command(
        ts, "build", func=_build,
        help="load the codecs of a config and write token_space.json + .sha256",
        description="Load the codecs of a config and write the token space they define (token_space.json and its "
                    ".sha256) into --out, without tokenizing anything. A folder that already holds the same "
                    "token space is left as it is; a different one is refused unless --force.",
        example="uti tokenspace build --config default --out ts/")
    add_config_flag(b)
    b.add_argument("--out", required=True, type=Path, help="directory to write into")
    b.add_argument("--force", action="store_true",
                   help="replace a different token space already in --out (e.g. a tokenized dataset's: its shards "
                        "then no longer match it)")
    b.set_defaults(tokenspace_func=_build)
    s = add_command(
        ts, "show", func=_show,
        help="print a token space as a table of ranges",
        description="Print a token space: its ID, vocabulary size, the ID range of every modality and codebook "
                    "level with the codec behind it, the token layouts and the special tokens.",
        example="uti tokenspace show data/tok/   (or a run folder, or a token_space.json)")
    s.add_argument("path", type=Path, help="token_space.json or a directory holding it (a dataset OUT, a run)")
    s.add_argument("--json", action="store_true", help="print the canonical JSON instead")
    s.set_defaults(tokenspace_func=_show)
    d = add_command(
        ts, "diff", func=_diff,
        help="name what changed between two token spaces (exit 1 when they differ)",
        description="Compare two token spaces and print every field that differs, as a dotted path with the old "
                    "and new value (e.g. codecs.audio.fingerprint). Exit 0 when identical, 1 when they differ.",
        example="uti tokenspace diff data/tok/ run/   (a dataset against the run trained on it)")
    d.add_argument("a", type=Path, metavar="A",
                   help="the first token space: token_space.json or a folder holding it (a dataset OUT, a run, "
                        "a checkpoint)")
    d.add_argument("b", type=Path, metavar="B", help="the second one, compared against A (changes read A -> B)")
    d.set_defaults(tokenspace_func=_diff)
    c = add_command(
        ts, "codecs", func=_codecs,
        help="list the installed codec kinds (built in and from `uti.codecs` plugins) with the sizes of their models",
        description="List every installed codec kind (built in, and from packages registering `uti.codecs` entry "
                    "points) with the sizes of its models: input rate or size, levels x codebook, frame rate and "
                    "layout. Exit 1 when a kind cannot be loaded.",
        example="uti tokenspace codecs --json")
    c.add_argument("--json", action="store_true", help="print the list as JSON")
    c.set_defaults(tokenspace_func=_codecs)


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
    lines.append("")
    for modality in ("image", "audio"):
        if space.has_modality(modality):
            layout = space.layout(modality)
            if modality == "image":
                where = (f"{layout.n_tokens} tokens in causal order" if layout.kind == "causal1d" else
                         f"{layout.grid[0]}x{layout.grid[1]} grid, row by row" if layout.grid else "row by row")
            else:
                where = (f"{layout.tokens_per_frame} tokens per frame: "
                         + " ".join(layout.level_ranges[k].name.split(".")[-1] for k in layout.pattern))
            lines.append(f"layout {modality}: {layout.kind}, {where}")
    named = [n for n in space.specials if not n.startswith("<reserved_")]
    lines += ["specials: " + " ".join(f"{n}={space.specials[n]}" for n in named)]
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


def _codecs(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from uti.codecs.registry import installed_codecs

    codecs = installed_codecs()
    if args.json:
        print(json.dumps([asdict(c) for c in codecs], indent=2, sort_keys=True, default=str))
    else:
        print(format_codecs(codecs))
    return 1 if any(c.error for c in codecs) else 0


def format_codecs(codecs) -> str:
    """One row per model of each installed kind: what a token space built with it will hold."""
    header = ("kind", "modality", "model", "input", "levels x codebook", "frame rate", "layout", "from")
    rows, notes = [], []
    for c in codecs:
        if c.error:
            notes.append(f"{c.kind}: cannot be loaded ({c.target}, from {c.source}): {c.error}")
            continue
        for v in c.variants or [None]:
            sizes = v.sizes if v else {}
            rows.append((c.kind, c.modality, v.model if v else "-", _input_label(sizes), _levels_label(sizes),
                         f"{round(sizes['frame_rate'], 2):g} Hz" if "frame_rate" in sizes else "-",
                         str(sizes.get("layout", "-")), c.source))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines += ["", "select one in uti.yaml with kind: (audio: {kind: mimi, n_q: 8}); weights: random:SEED "
                  "[+ arch: small] or a local model folder"]
    return "\n".join(lines + notes)


def _input_label(sizes: dict) -> str:
    if "sample_rate" in sizes:
        out = sizes.get("output_sample_rate")
        rate = f"{sizes['sample_rate']} Hz" if out in (None, sizes["sample_rate"]) else f"{sizes['sample_rate']} -> {out} Hz"
        return f"{rate}, {sizes.get('channels', 1)} ch"
    if "proc_size" in sizes:
        p, g = sizes["proc_size"], sizes.get("grid", ["?", "?"])
        if "n_tokens" in sizes:
            return f"{p[0]}x{p[1]} px -> {sizes['n_tokens']} tokens"
        return f"{p[0]}x{p[1]} px -> {g[0]}x{g[1]}"
    return "-"


def _levels_label(sizes: dict) -> str:
    book = sizes.get("codebook_size", "?")
    n_q = sizes.get("n_q")
    if isinstance(n_q, dict):  # by a setting, e.g. EnCodec's bandwidth
        return f"{min(n_q.values())}-{max(n_q.values())} x {book}"
    if "codes_per_frame" in sizes:
        return f"{n_q} ({'+'.join(map(str, sizes['codes_per_frame']))} per frame) x {book}"
    if "max_n_q" in sizes and sizes["max_n_q"] != n_q:
        return f"{n_q} of {sizes['max_n_q']} x {book}"
    return f"{n_q or 1} x {book}"


def register_audit(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "audit", help="the Stage-1 audit bundle: token space, determinism, ranges, decode, metrics",
                    example="uti audit --out audit/ --baseline audit-baseline/report.json", func=_audit)
    p.add_argument("--out", required=True, type=Path, help="directory for the bundle")
    add_config_flag(p)
    p.add_argument("--assets", type=Path, default=None, help="folder of .wav/.flac and .png/.jpg (default: built-in synthesized assets)")
    p.add_argument("--decode-mode", choices=("deterministic", "diffusion"), default="deterministic",
                   help="how the decode checks decode tokens: deterministic (every codec uti ships) or diffusion "
                        "(only for a codec with a diffusion decoder)")
    p.add_argument("--baseline", type=Path, default=None, help="a previous report.json: gate on its regression limits")


def _audit(args: argparse.Namespace) -> int:
    from uti.audit import format_table, run_audit

    result = run_audit(out=args.out, config=args.config, assets=args.assets, decode_mode=args.decode_mode,
                       baseline=args.baseline)
    print(format_table(result))
    print(f"\nbundle: {args.out}/ (report.json, token_space.json, recon.png, recon.wav, *_tokens.sha256)")
    return 0 if result.passed else 1


def register_doctor(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "doctor", func=_doctor,
                    help="check this environment: one line per item, ok or what is wrong and the exact fix",
                    description="Check what uti needs here: the torch/torchaudio pair and its compiled extension, "
                                "the other compiled extensions, libsndfile and its formats, an m4a/webm decoder, "
                                "the codec packages, CUDA, Ray and ray[default], the s3 extra and its credential "
                                "chain (never printing a secret), and free disk space. Exits 1 when something the "
                                "main job needs is broken, 0 otherwise (optional items only warn).",
                    example="uti doctor --path /data/tok")
    p.add_argument("--path", default=".", help="the folder whose free space to check (where --out will go)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--cloud-metadata", action="store_true",
                   help="let the AWS credential chain ask the instance-metadata service (a network call to "
                        "169.254.169.254, left out by default)")
    p.add_argument("--min-free-gb", type=float, default=1.0, help="fail below this much free space, in GiB")


def _doctor(args: argparse.Namespace) -> int:
    from uti.doctor import DoctorOptions, format_report, run_doctor

    report = run_doctor(DoctorOptions(path=args.path, cloud_metadata=args.cloud_metadata,
                                      min_free_gib=args.min_free_gb))
    print(report.to_json() if args.json else format_report(report))
    return 0 if report.ok else 1
