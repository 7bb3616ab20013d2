"""`uti verify OUT`: flags -> VerifyConfig -> run_verify -> summary table; exit 1 when a hard check fails."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from sharding.storage import add_storage_options_flag, configure_storage_options
from uti.cli import add_command
from uti.progress import add_progress_every_flag
from verify.config import VerifyConfig

# flag attribute -> VerifyConfig field, for the flags that map one to one
_FIELDS = ("address", "num_cpus", "token_space", "decode_fraction", "retokenize_fraction", "seed", "max_seq_len",
           "loader_batches", "loader_batch_size", "baseline", "write_baseline", "report_dir", "max_examples", "device",
           "cross_device_agreement")
# VerifyConfig field -> what the user typed, so a config error names the flag (uti.strict.from_flags)
_FLAGS = {**{f: "--" + f.replace("_", "-") for f in (*_FIELDS, "fail_on_truncation", "allow_token_space_mismatch")},
          "out": "OUT", "plots": "--no-plots", "baseline_limits.sample_count_rel_drop": "--baseline-tolerance"}
# The flags' defaults are VerifyConfig's own, so --help shows what a run uses.
_DEFAULT = {f.name: f.default for f in dataclasses.fields(VerifyConfig) if f.default is not dataclasses.MISSING}


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "verify",
        help="verify a tokenized dataset (one Ray task per shard) and write report.json + report.html",
        example="uti verify out/ --decode-fraction 0.01 --retokenize-fraction 0.001 --max-seq-len 4096",
        func=_run,
    )
    p.add_argument("out", help="the OUT folder of `uti tokenize` (local path or fsspec URL)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--token-space", default=None, metavar="FILE",
                   help="expected token_space.json (or its folder); default: the dataset's own")
    p.add_argument("--decode-fraction", type=float, default=_DEFAULT["decode_fraction"], metavar="F",
                   help="share of samples to decode; 0 skips")
    p.add_argument("--retokenize-fraction", type=float, default=_DEFAULT["retokenize_fraction"], metavar="F",
                   help="share of samples to re-encode from source and compare; 0 skips")
    p.add_argument("--seed", type=int, default=_DEFAULT["seed"], help="seed of the decode/retokenize sample")
    p.add_argument("--max-seq-len", type=int, default=None, metavar="L", help="report sequences longer than L tokens")
    p.add_argument("--fail-on-truncation", action="store_true", help="make sequences over --max-seq-len a hard failure")
    p.add_argument("--loader-batches", type=int, default=_DEFAULT["loader_batches"], metavar="N",
                   help="batches for the data-loader smoke test; 0 skips")
    p.add_argument("--loader-batch-size", type=int, default=_DEFAULT["loader_batch_size"], metavar="B",
                   help="samples per batch of the data-loader smoke test")
    p.add_argument("--baseline", default=None, metavar="FILE", help="gate on this baseline (from --write-baseline)")
    p.add_argument("--baseline-tolerance", type=float, default=None, metavar="F",
                   help="with --baseline: share of a sample count (total, per split, per modality) that may be lost "
                        "before the gate fails, e.g. 0.02 (default 0); a count that grew always passes")
    p.add_argument("--write-baseline", default=None, metavar="FILE", help="store this run's metrics as a baseline")
    p.add_argument("--report-dir", default=None, metavar="DIR", help="where report.json/html go (default OUT/verify)")
    p.add_argument("--max-examples", type=int, default=_DEFAULT["max_examples"], metavar="N",
                   help="failure examples kept per check in report.json (the counts are always complete)")
    p.add_argument("--device", default=_DEFAULT["device"], help="device of the decode/retokenize tasks")
    p.add_argument("--cross-device-agreement", type=float, default=_DEFAULT["cross_device_agreement"], metavar="A",
                   help="retokenize of shards made with other numerics than this run's (another device type, media "
                        "prepared on the device, no policy recorded): the share of equal codes that passes; never "
                        "reported as exact (docs/verify.md)")
    p.add_argument("--no-plots", action="store_true", help="write report.html without plots")
    p.add_argument("--allow-token-space-mismatch", action="store_true",
                   help="run the decode/retokenize checks even when the codecs loaded from job.json's config differ "
                        "from the dataset's token space (other weights); each difference is recorded in "
                        "report.json \"overrides\" and named on the console")
    p.add_argument("--clean-orphans", action="store_true",
                   help="first delete what interrupted writers left under OUT/shards (tars without index, temp "
                        "files, incomplete S3 multipart uploads; nothing else), then verify. Only while no "
                        "`uti tokenize` is writing to OUT: its unfinished shards look the same")
    add_progress_every_flag(p)
    add_storage_options_flag(p)


def _run(args: argparse.Namespace) -> int:
    from uti.strict import from_flags
    from verify.config import VerifyConfig
    from verify.findings import Check
    from verify.report import format_summary
    from verify.run import run_verify

    configure_storage_options(args.storage_options)  # environment only: never part of the config or report
    data = {"out": args.out, **{f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}}
    if args.fail_on_truncation:
        data["fail_on_truncation"] = True
    if args.no_plots:
        data["plots"] = False
    if args.allow_token_space_mismatch:
        data["allow_token_space_mismatch"] = True
    if args.baseline_tolerance is not None:
        if args.baseline is None:
            from uti.errors import ConfigError

            raise ConfigError("--baseline-tolerance applies to a --baseline gate; give --baseline FILE too")
        data["baseline_limits"] = {"sample_count_rel_drop": args.baseline_tolerance}
    cfg = from_flags(VerifyConfig, data, flags=_FLAGS, where="uti verify")
    _orphans(args.out, clean=args.clean_orphans)
    result = run_verify(cfg, progress_every=args.progress_every)
    print(format_summary(result.report))
    # Warnings that change how to read the result (a baseline from another token space) go to the
    # console in full, not only into the report.
    for warning in result.check(Check.BASELINE)["warnings"]:
        print(f"uti verify: warning: baseline: {warning}", file=sys.stderr)
    for record in result.report.get("overrides", []):
        print(f"uti verify: warning: --allow-token-space-mismatch: the codec checks ran with a {record['what']} of "
              f"token space {record['found'][:16]}, not the dataset's {record['expected'][:16]} (in report.json "
              "\"overrides\")", file=sys.stderr)
    print(f"\nreport: {result.json_path}\n        {result.html_path}")
    if result.baseline_path:
        print(f"baseline written: {result.baseline_path}")
    return result.exit_code


def _orphans(out: str, *, clean: bool) -> None:
    """--clean-orphans: delete and list them. Without it, name the orphans the report cannot show (incomplete
    multipart uploads are in no listing); tars without index fail shard_integrity in the report."""
    from verify.dataset import clean_orphans, incomplete_uploads

    if clean:
        removed = clean_orphans(out)
        for o in removed:
            print(f"removed orphan {o.url} ({o.kind})")
        print(f"--clean-orphans: removed {len(removed)} orphan(s) under {out}")
        return
    pending = incomplete_uploads(out)
    if pending:
        print(f"uti verify: warning: {len(pending)} incomplete multipart upload(s) of shard tars under {out} "
              f"(orphans of interrupted writers, e.g. {pending[0].url}); --clean-orphans aborts them", file=sys.stderr)
