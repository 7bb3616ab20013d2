"""`uti manifest`: flags in, `sharding.manifest.make_manifest` out, a short summary printed."""

from __future__ import annotations

import argparse
from typing import Any

from uti.cli import add_command

from sharding.manifest import make_manifest, parse_split_fractions, summary_path
from sharding.storage import add_storage_options_flag, configure_storage_options

# flag dest -> adapter option; only flags the user actually gave are passed on, so an option that
# does not apply to the chosen dataset is refused instead of ignored.
_OPTION_FLAGS = {
    "audio_pattern": "audio_pattern",
    "split_fractions": "split_fractions",
    "file": "file",
    "name": "name",
    "hf_audio_column": "audio_column",
    "hf_image_column": "image_column",
    "hf_caption_column": "caption_column",
    "hf_id_column": "id_column",
    "sources": "sources",
    "blacklist": "blacklist",
    "max_rows": "max_rows",
    "valid_subset": "valid_subset",
}


def register_manifest(sub: argparse._SubParsersAction) -> None:
    from sharding.datasets import dataset_names

    p = add_command(
        sub,
        "manifest",
        help="write a manifest (JSONL of samples) from a dataset's real layout",
        example="uti manifest --dataset clotho --root data/clotho --out clotho.jsonl",
        func=run_manifest,
    )
    # No argparse `choices`: an unknown name then fails as one clear line naming the known ones.
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help=f"dataset layout to read: {', '.join(dataset_names())}")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="dataset folder (for jsonl/hf also a .jsonl/.parquet file)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="manifest file to write; its summary goes next to it as NAME.summary.json")
    p.add_argument("--split", nargs="+", action="extend", metavar="S", help="only these splits (repeatable)")
    p.add_argument("--audio-pattern", metavar="PATTERN",
                   help="audio file name: audiocaps '{youtube_id}_{start_time}.wav' (default), 'Y{youtube_id}.wav', "
                   "'{audiocap_id}.wav'; musiccaps '{ytid}.*' (default); wavcaps 'audio/{source}/{id}.flac' "
                   "(default). End it with '.*' for any audio extension or '.{flac,m4a,mp3}' for these, in "
                   "this order of preference")
    p.add_argument("--sources", nargs="+", action="extend", metavar="SOURCE",
                   help="wavcaps: only these sources (FreeSound, BBC_Sound_Effects, SoundBible, AudioSet_SL; "
                   "any case)")
    p.add_argument("--blacklist", nargs="+", action="extend", metavar="FILE",
                   help="wavcaps: blacklist JSONs (as WavCaps ships them) whose rows are rejected")
    p.add_argument("--max-rows", type=int, metavar="N",
                   help="wavcaps: only the N rows with the smallest canonical-ID hash (the same rows for any file "
                   "order; a larger N keeps them); the summary counts the rows left out")
    p.add_argument("--valid-subset", action="store_true", default=None,
                   help="song_describer: only captions with is_valid_subset true")
    p.add_argument("--split-fractions", metavar="NAME=F,...",
                   help="hash splits for datasets without splits (default train=0.98,val=0.01,test=0.01)")
    p.add_argument("--file", help="llava: the JSON (default blip_laion_cc_sbu_558k.json); jsonl: the JSONL file")
    p.add_argument("--name", help="jsonl/hf: dataset name used as the canonical ID prefix (default: jsonl/hf)")
    p.add_argument("--hf-audio-column", metavar="COLUMN", help="hf: audio column (default: the column typed Audio)")
    p.add_argument("--hf-image-column", metavar="COLUMN", help="hf: image column (default: the column typed Image)")
    p.add_argument("--hf-caption-column", metavar="COLUMN",
                   help="hf: caption column (default: caption, captions or text)")
    p.add_argument("--hf-id-column", metavar="COLUMN",
                   help="hf: column with the item's own ID (default: id when present)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="follow symlinks inside --root even when they lead out of it (default: such rows are "
                   "rejected); '..' and absolute paths outside the root stay refused; recorded in the summary")
    add_storage_options_flag(p)


def run_manifest(args: argparse.Namespace) -> int:
    configure_storage_options(args.storage_options)  # environment only: never in the manifest or its summary
    options: dict[str, Any] = {
        opt: getattr(args, dest) for dest, opt in _OPTION_FLAGS.items() if getattr(args, dest) is not None
    }
    if "split_fractions" in options:
        options["split_fractions"] = parse_split_fractions(options["split_fractions"])
    summary = make_manifest(args.dataset, args.root, args.out, splits=args.split,
                            follow_symlinks=args.follow_symlinks, **options)
    print(format_summary(summary, summary_file=str(summary_path(args.out))))
    return 0


def format_summary(summary: dict[str, Any], *, summary_file: str) -> str:
    lines = [f"manifest: {summary['rows']} rows -> {summary['manifest']} (sha256 {summary['manifest_sha256'][:16]}...)"]
    if summary.get("follow_symlinks"):
        lines.append("  --follow-symlinks: symlinks inside the root were followed, also out of it")
    for split, counts in sorted(summary["by_split"].items()):
        lines.append(f"  {split}: " + ", ".join(f"{n} {m}" for m, n in sorted(counts.items())))
    if summary.get("by_extension"):
        lines.append("  files: " + ", ".join(f"{n} {ext}" for ext, n in summary["by_extension"].items()))
    if summary.get("subset"):
        subset = summary["subset"]
        lines.append(f"  subset: --max-rows {subset['max_rows']} of {subset['of']} rows "
                     f"({subset['left_out']} left out, chosen by canonical-ID hash)")
    for empty in summary.get("empty_splits", ()):
        lines.append(f"  warning: split {empty['split']!r} got 0 rows: {empty['reason']}; {empty['fix']}")
    if summary["missing"]["count"]:
        lines.append(f"  missing files: {summary['missing']['count']} (listed in {summary_file})")
    rejected = summary["rejected"]
    if rejected["count"]:
        first = rejected["rows"][0]
        lines.append(
            f"  rejected: {rejected['count']} (listed in {summary_file}), e.g. {first['item']}: {first['reason']}"
        )
    return "\n".join(lines)
