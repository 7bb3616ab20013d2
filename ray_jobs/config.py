"""`uti tokenize` configuration: a typed keyword-only dataclass that rejects unknown keys."""

from __future__ import annotations

from dataclasses import dataclass

from uti.errors import ConfigError
from uti.progress import DEFAULT_EVERY, check_every

READ_IN = ("auto", "actors", "tasks")  # `--read-in`: see ray_jobs.resources
# `--prepare-on`: where resampling, channel mixing and image resizing run (ray_jobs.resources.prepare_on).
# "reader" and "device" are uti.codecs.batching.PREPARE_READER/PREPARE_DEVICE, spelled out here so the
# driver reads its config without importing torch.
PREPARE_READER, PREPARE_DEVICE = "reader", "device"
PREPARE_ON = ("auto", PREPARE_READER, PREPARE_DEVICE)


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
    batch_seconds: float = 60.0  # audio seconds per chunk, the unit of work (bounds memory per actor)
    max_images_per_batch: int = 64  # images per chunk
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
        if self.max_images_per_batch < 1:
            raise ConfigError(f"--max-images-per-batch must be >= 1, got {self.max_images_per_batch}")
        if self.batch_seconds <= 0:
            raise ConfigError(f"--batch-seconds must be > 0, got {self.batch_seconds}")
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
