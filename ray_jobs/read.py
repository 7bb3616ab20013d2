"""CPU read tasks: decode, check and resample/resize one chunk of a shard's rows.

They run as separate Ray tasks, ahead of the codec actors, so an actor never waits on I/O; they
return plain numpy arrays (zero-copy through the object store) or per-row errors.
"""

from __future__ import annotations

from typing import Any

from sharding.manifest import ManifestRow
from sharding.media import AudioSpec, load_media
from uti.config import LimitsConfig
from uti.errors import MediaError


def read_rows(rows: list[dict], *, sample_rate: int, channels: int, proc_size: int, limits: dict,
              no_range: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """`no_range` maps each modality the token space has no range for to the reason (a per-sample
    error: the config leaves that modality out, so its rows cannot be tokenized, but the rest can)."""
    lim = LimitsConfig(**limits)
    spec = AudioSpec(sample_rate=sample_rate, channels=channels)
    no_range = no_range or {}
    out = []
    for data in rows:
        row = ManifestRow.from_dict(data)
        if row.modality in no_range:
            out.append({"id": row.id, "ok": False, "stage": "tokenize", "reason": f"no_{row.modality}_range",
                        "detail": no_range[row.modality]})
            continue
        try:
            # The same loader verify's retokenize check uses (files and Hugging Face rows alike).
            media = load_media(row, spec=spec, proc_size=proc_size, limits=lim)
            if media is None:  # text
                out.append({"id": row.id, "ok": True, "data": None, "sha": None, "info": {}})
            else:
                data = media.data.numpy() if row.modality == "audio" else media.data
                out.append({"id": row.id, "ok": True, "data": data, "sha": media.source_sha256, "info": media.info})
        except MediaError as exc:
            out.append({"id": row.id, "ok": False, "stage": exc.stage, "reason": exc.reason, "detail": str(exc)})
    return out
