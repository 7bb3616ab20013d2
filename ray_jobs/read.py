"""CPU read tasks: decode, check and resample/resize one chunk of a shard's rows.

They run as separate Ray tasks, ahead of the codec actors, so an actor never waits on I/O. With
`prepare=False` (`--prepare-on device`) they only decode and check: the media comes back raw (audio at its
source rate and channels, images at their source size) and the codec actor prepares it on its device. Rows arrive as
the driver's `ManifestRow`s (pickled as they are: no dict round trip, no re-validation) and each comes back
as a `ReadResult`: its media as a plain numpy array (zero-copy through the object store), or why it failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sharding.manifest import ManifestRow
from ray_jobs.config import PREPARE_DEVICE, PREPARE_READER
from sharding.media import AudioSpec, load_media
from uti.config import LimitsConfig
from uti.errors import MediaError


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """Why a row cannot be tokenized: its errors.jsonl row once the actor adds the path, split and shard."""

    stage: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One row after its read task: `data` is the decoded media (audio [channels, samples] float32, or the
    resized image), None for a text row or a failed one; `failure` says why a row cannot be tokenized.
    `prepared` False: `data` is raw (sharding.media.load_media(prepare=False)), for the actor to prepare."""

    id: str
    data: np.ndarray | None = None
    source_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    failure: ReadFailure | None = None
    prepared: bool = True

    @property
    def ok(self) -> bool:
        return self.failure is None


def read_rows(rows: list[ManifestRow], *, sample_rate: int, channels: int, proc_size: int, limits: LimitsConfig,
              no_range: dict[str, str] | None = None, prepare: bool = True) -> list[ReadResult]:
    """`no_range` maps each modality the token space has no range for to the reason (a per-sample
    error: the config leaves that modality out, so its rows cannot be tokenized, but the rest can).
    `prepare` False: decode and check only (prepare_on "device", see `prepare_args`)."""
    spec = AudioSpec(sample_rate=sample_rate, channels=channels)
    no_range = no_range or {}
    return [_read_row(row, spec=spec, proc_size=proc_size, limits=limits, no_range=no_range, prepare=prepare)
            for row in rows]


def prepare_args(prepare_on: str) -> dict[str, Any]:
    """The read_rows arguments that say who prepares: the read task ("reader") or the actor ("device")."""
    if prepare_on not in (PREPARE_READER, PREPARE_DEVICE):
        raise ValueError(f"prepare_on must be {PREPARE_READER!r} or {PREPARE_DEVICE!r}, got {prepare_on!r}")
    return {"prepare": prepare_on == PREPARE_READER}


def _read_row(row: ManifestRow, *, spec: AudioSpec, proc_size: int, limits: LimitsConfig,
              no_range: dict[str, str], prepare: bool) -> ReadResult:
    if row.modality in no_range:
        return ReadResult(row.id, failure=ReadFailure("tokenize", f"no_{row.modality}_range", no_range[row.modality]))
    try:
        # The same loader verify's retokenize check uses (files and Hugging Face rows alike).
        media = load_media(row, spec=spec, proc_size=proc_size, limits=limits, prepare=prepare)
    except MediaError as exc:
        return ReadResult(row.id, failure=ReadFailure(exc.stage, exc.reason, str(exc)))
    if media is None:  # text
        return ReadResult(row.id)
    data = media.data.numpy() if row.modality == "audio" and media.prepared else media.data
    return ReadResult(row.id, data=data, source_sha256=media.source_sha256, info=media.info, prepared=media.prepared)
