"""Weight sources and fingerprints shared by the adapters."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from uti.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class WeightsSpec:
    kind: str  # "random" | "pretrained" | "path"
    seed: int | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        """What the token space records. Real weights are "pretrained" wherever they were loaded from,
        so the same weights give the same token-space ID on every machine; the fingerprint tells them apart."""
        return f"random:{self.seed}" if self.kind == "random" else "pretrained"


def parse_weights(spec: str, *, where: str) -> WeightsSpec:
    if spec.startswith("random:"):
        try:
            return WeightsSpec(kind="random", seed=int(spec.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"{where}: {spec!r} is not random:SEED with an integer seed") from None
    if spec == "pretrained":
        return WeightsSpec(kind="pretrained")
    return WeightsSpec(kind="path", path=Path(spec).expanduser())


def fingerprint_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)
