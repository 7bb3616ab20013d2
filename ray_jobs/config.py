"""`uti tokenize` configuration: a typed keyword-only dataclass that rejects unknown keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from uti.errors import ConfigError
from uti.progress import DEFAULT_EVERY, check_every

READ_IN = ("auto", "actors", "tasks")  # `--read-in`: see ray_jobs.resources
# `--prepare-on`: where resampling, channel mixing and image resizing run (ray_jobs.resources.prepare_on).
# "reader" and "device" are uti.codecs.batching.PREPARE_READER/PREPARE_DEVICE, spelled out here so the
# driver reads its config without importing torch.
PREPARE_READER, PREPARE_DEVICE = "reader", "device"
PREPARE_ON = ("auto", PREPARE_READER, PREPARE_DEVICE)
# uti.codecs.batching.MAX_ENCODE_BATCH (a test keeps them equal): importing uti.codecs would import torch
# into the driver, which loads no codec (+1.6 s to every command's start on two cores).
MAX_ENCODE_BATCH = 1024
# A chunk's default size: at least this much, and room for several full forward passes of the encode batch
# B (30 s per item: 6 passes of 5 s clips; 4 passes of images), so the last, dummy-filled pass of each of
# a chunk's length buckets is a small share of its passes.
CHUNK_SECONDS, CHUNK_IMAGES = 60.0, 64
CHUNK_SECONDS_PER_ITEM, CHUNK_IMAGES_PER_ITEM = 30.0, 4


def default_chunk_seconds(encode_batch: int) -> float:
    """--batch-seconds when not given: max(60, 30 x the audio encode batch)."""
    return max(CHUNK_SECONDS, CHUNK_SECONDS_PER_ITEM * encode_batch)


def default_chunk_images(encode_batch: int) -> int:
    """--max-images-per-batch when not given: max(64, 4 x the image encode batch)."""
    return max(CHUNK_IMAGES, CHUNK_IMAGES_PER_ITEM * encode_batch)


@dataclass(kw_only=True, frozen=True)
class TokenizeConfig:
    manifests: tuple[str, ...]
    out: str
    config: str | None = None  # codec config: preset name or uti.yaml path
    address: str | None = None  # None: a local Ray instance; "auto", "HOST:PORT" or "ray://..." joins a cluster
    num_actors: int | None = None  # None: one per GPU, or on CPU as many as leave CPU for reads (ray_jobs.resources)
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU threads)
    cpus_per_actor: float = 1.0
    shard_samples: int | None = None
    shard_seconds: float | None = None
    # Audio seconds / images per chunk, the unit of work (bounds memory per actor). None: sized by the encode
    # batch (default_chunk_seconds / default_chunk_images); the job fills in what it used (job.json "arguments").
    batch_seconds: float | None = None
    max_images_per_batch: int | None = None
    # Items per forward pass for the audio and image codecs (uti.codecs.batching); it wins over uti.yaml's
    # per-codec `encode_batch:`. None: the yaml's value, else the device's default (1 on CPU).
    encode_batch: int | None = None
    max_shard_failures: int = 3  # a chunk (or shard writer) failing this often stops the job, naming the shard
    read_cpus: float = 0.5  # logical CPUs per read task: reading is light next to encoding
    read_in: str = "auto"  # who reads the media: "actors", "tasks", or auto (CPU actors read, GPU actors get tasks)
    prepare_on: str = "auto"  # who prepares it: "reader", "device", or auto (the device for GPU actors)
    dashboard: bool = False
    progress: bool = True  # a bar on a terminal, else a line every progress_every seconds (uti.progress)
    progress_every: float = DEFAULT_EVERY

    def __post_init__(self) -> None:
        if not self.manifests:
            raise ConfigError("tokenize: give at least one --manifest")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"--num-actors must be >= 1, got {self.num_actors}")
        if self.shard_samples is not None and self.shard_seconds is not None:
            raise ConfigError("give either --shard-samples or --shard-seconds, not both")
        if self.shard_samples is not None and self.shard_samples < 1:
            raise ConfigError(f"--shard-samples must be >= 1, got {self.shard_samples}")
        if self.shard_seconds is not None and self.shard_seconds <= 0:
            raise ConfigError(f"--shard-seconds must be > 0, got {self.shard_seconds}")
        if self.max_images_per_batch is not None and self.max_images_per_batch < 1:
            raise ConfigError(f"--max-images-per-batch must be >= 1, got {self.max_images_per_batch}")
        if self.batch_seconds is not None and not self.batch_seconds > 0:
            raise ConfigError(f"--batch-seconds must be > 0, got {self.batch_seconds}")
        b = self.encode_batch
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_ENCODE_BATCH):
            raise ConfigError(f"--encode-batch: must be a whole number from 1 to {MAX_ENCODE_BATCH}, got {b!r}")
        if not self.read_cpus > 0:
            raise ConfigError(f"--read-cpus must be > 0, got {self.read_cpus}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"--cpus-per-actor must be > 0, got {self.cpus_per_actor}")
        if self.read_in not in READ_IN:
            raise ConfigError(f"--read-in must be one of {', '.join(READ_IN)}, got {self.read_in!r}")
        if self.prepare_on not in PREPARE_ON:
            raise ConfigError(f"--prepare-on must be one of {', '.join(PREPARE_ON)}, got {self.prepare_on!r}")
        check_every(self.progress_every)
        if self.max_shard_failures < 1:
            raise ConfigError(f"--max-shard-failures must be >= 1, got {self.max_shard_failures}")

    def sized(self, *, audio_batch: int, image_batch: int) -> "TokenizeConfig":
        """This config with the chunk sizes it leaves open filled in for the actors' encode batches (what
        job.json's "arguments" records). Chunk bounds still depend only on the rows and the config."""
        seconds, images = self.batch_seconds, self.max_images_per_batch
        return dataclasses.replace(
            self, batch_seconds=seconds if seconds is not None else default_chunk_seconds(audio_batch),
            max_images_per_batch=images if images is not None else default_chunk_images(image_batch))

    @property
    def chunk_seconds(self) -> float:
        """Audio seconds per chunk: --batch-seconds, else sized by --encode-batch (1 when not given)."""
        return self.batch_seconds if self.batch_seconds is not None else default_chunk_seconds(self.encode_batch or 1)

    @property
    def chunk_images(self) -> int:
        """Images per chunk: --max-images-per-batch, else sized by --encode-batch (1 when not given)."""
        return self.max_images_per_batch if self.max_images_per_batch is not None else \
            default_chunk_images(self.encode_batch or 1)
