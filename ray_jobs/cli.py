"""`uti tokenize`: flags -> TokenizeConfig -> ray_jobs.job.run_tokenize."""

from __future__ import annotations

import argparse

from ray_jobs.config import PREPARE_ON, READ_IN
from sharding.outdir import ERRORS_NAME, path_of
from sharding.storage import add_storage_options_flag, configure_storage_options
from uti.cli import add_command, add_config_flag
from uti.progress import add_progress_every_flag


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "tokenize", func=_run,
        help="tokenize manifests into WebDataset shards with Ray codec actors (resumable, exactly once)",
        example="uti tokenize --manifest clotho.jsonl --manifest llava.jsonl --out data/tok --num-actors 2\n"
                "  ray job submit -- uti tokenize --manifest s3://b/m.jsonl --out s3://b/tok --address auto",
    )
    p.add_argument("--manifest", action="append", required=True, help="manifest JSONL (repeatable)")
    p.add_argument("--out", required=True, help="output folder or fsspec URL (s3://, gs://)")
    add_config_flag(p)
    p.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://...; default: a local instance")
    p.add_argument("--num-actors", type=int, default=None,
                   help="codec actors; default: one per GPU, or on CPU-only clusters one per CPU (every core on "
                        "one machine)")
    p.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor (0.5 shares one); default: 1 if the cluster has GPUs")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPU threads per codec actor")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-samples", type=int, default=None, help="samples per shard (default 1000)")
    size.add_argument("--shard-seconds", type=float, default=None, help="seconds of audio per shard")
    p.add_argument("--batch-seconds", type=float, default=None,
                   help="seconds of audio per chunk (the unit of work: any actor encodes any chunk of any shard); "
                        "default: max(60, 30 x the audio encode batch), so a chunk holds several full forward passes")
    p.add_argument("--max-images-per-batch", type=int, default=None,
                   help="images per chunk; default: max(64, 4 x the image encode batch)")
    p.add_argument("--encode-batch", type=int, default=None, metavar="N",
                   help="items (clips or images) one forward pass of the audio and image codecs takes; wins over "
                        "uti.yaml's per-codec encode_batch:. Passes have a fixed shape (length buckets, dummy items), "
                        "so a sample's tokens never depend on its batch neighbours; each actor checks that at start "
                        "and refuses a codec whose codes change with the batch. Larger keeps a GPU busy; on a CPU "
                        "batching measured no gain. Default: the yaml's value, else 1 on CPU and on GPU the GPU "
                        "default (DEFAULT_GPU_ENCODE_BATCH in uti/codecs/batching.py); job.json's encode_policy "
                        "records the value used")
    p.add_argument("--read-in", choices=READ_IN, default="auto",
                   help="who decodes and resamples the media: CPU read tasks feeding the actors, or the codec actors "
                        "themselves; auto: tasks for GPU actors (decoding overlaps the GPU), the actors on CPU (a read "
                        "task's worker costs more CPU than the reads)")
    p.add_argument("--prepare-on", choices=PREPARE_ON, default="auto",
                   help="where resampling, channel mixing and image resizing run: the CPU read path (reader) or "
                        "the codec actor's device (read tasks then only decode); auto: the device for GPU actors, "
                        "the reader on CPU. Recorded in each shard's encode policy (images resized on the device "
                        "are not PIL's pixels, so their tokens differ)")
    p.add_argument("--read-cpus", type=float, default=0.5,
                   help="logical CPUs each read task reserves (default 0.5); lower lets more read tasks run at once "
                        "beside the actors when the actors wait for their media")
    p.add_argument("--max-shard-failures", type=int, default=3, help="stop after this many failures of one chunk (or of one shard's writer)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (bound to 127.0.0.1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    add_progress_every_flag(p)
    add_storage_options_flag(p)
    # Ctrl-C and SIGTERM stop the same clean way (uti.cli.main): complete shards are kept.
    p.set_defaults(on_interrupt="rerun the same command to resume")


def _run(args: argparse.Namespace) -> int:
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    configure_storage_options(args.storage_options)  # environment only: never part of the config or job.json
    cfg = TokenizeConfig(
        manifests=tuple(args.manifest), out=args.out, config=args.config, address=args.address,
        num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
        shard_samples=args.shard_samples, shard_seconds=args.shard_seconds, batch_seconds=args.batch_seconds,
        max_images_per_batch=args.max_images_per_batch, encode_batch=args.encode_batch, read_in=args.read_in,
        read_cpus=args.read_cpus, prepare_on=args.prepare_on,
        max_shard_failures=args.max_shard_failures, dashboard=args.dashboard, progress=not args.no_progress,
        progress_every=args.progress_every,
    )
    job = run_tokenize(cfg)
    c, t = job["counts"], job["throughput"]
    errors = f"  per-sample errors: {path_of(args.out, ERRORS_NAME)}" if c["errors"] else None
    if c["shards"]["written"] == 0:
        print(f"nothing to do: all {c['shards']['total']} shards complete at {args.out} "
              f"({c['samples']} samples, {c['errors']} errors)")
        if errors:
            print(errors)
        return 0
    if c["shards"]["skipped_complete"]:  # a resumed run: what this run did, and what OUT holds now
        written = c["shards"]["written"]
        print(f"tokenized {c['samples_this_run']} samples ({c['errors_this_run']} errors) this run into "
              f"{written} shard{'s' if written != 1 else ''}; {args.out} now holds {c['samples']} samples "
              f"({c['errors']} errors) in {c['shards']['total']} shards ({c['shards']['skipped_complete']} were "
              "already complete)")
    else:
        print(f"tokenized {c['samples']} samples ({c['errors']} errors) into {c['shards']['total']} shards "
              f"at {args.out}")
    rates = []  # each over the time its modality was being encoded; a modality this run did not touch is left out
    if t["audio_seconds"]:
        rates.append(f"{t['audio_seconds_per_second']:.1f} audio s/s")
    if t["images"]:
        rates.append(f"{t['images_per_second']:.1f} images/s")
    rates.append(f"{t['tokens_per_second']:,.0f} tokens/s")
    print(f"  {', '.join(rates)}; actors busy {job['actors']['busy_fraction']:.0%}")
    if errors:
        print(errors)
    return 0
