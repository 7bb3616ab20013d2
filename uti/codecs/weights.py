"""Weight sources and fingerprints shared by the adapters."""

from __future__ import annotations

import hashlib
import math
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
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")  # 0-dim too
    return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)


# Bump when the random-init algorithm changes: cached weights of an older algorithm are then ignored.
RANDOM_INIT_VERSION = 1


def uti_cache_dir() -> Path:
    """Where uti keeps what it can rebuild (random weights, codec descriptors): $UTI_CACHE_DIR or ~/.cache/uti."""
    import os

    return Path(os.environ.get("UTI_CACHE_DIR") or Path.home() / ".cache" / "uti")


def random_weights_cache_dir() -> Path:
    return uti_cache_dir() / "random-weights"


def cached_random_state(key: str, build) -> dict[str, torch.Tensor]:
    """`random:SEED` weights cost seconds to compute (a float64 calibration pass); every actor and
    test needs the same ones. Cache them by (key, init algorithm, torch version), loaded weights-only.
    A cache that cannot be written is skipped, never an error."""
    import os
    import tempfile

    digest = hashlib.sha256(f"{key}|init-v{RANDOM_INIT_VERSION}|torch-{torch.__version__}".encode()).hexdigest()[:24]
    path = random_weights_cache_dir() / f"{digest}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt
            path.unlink(missing_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in build().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    return state


def calibration_signal(sample_rate: int, channels: int, seconds: float, seed: int) -> torch.Tensor:
    """Deterministic mixture of tones, chirps and noise bursts used to seed random codebooks."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sample_rate)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    sig = torch.zeros(n, dtype=torch.float64)
    for _ in range(8):
        f0 = 80 + 4000 * torch.rand(1, generator=g, dtype=torch.float64).item()
        f1 = 80 + 4000 * torch.rand(1, generator=g, dtype=torch.float64).item()
        phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        sig += 0.1 * torch.sin(phase)
    envelope = (torch.sin(2 * math.pi * 0.7 * t) > 0).double()
    sig += 0.2 * envelope * torch.randn(n, generator=g, dtype=torch.float64)
    sig = sig / sig.abs().max() * 0.8
    return sig.float().repeat(channels, 1)[None]  # (1, channels, n)


def round_to_half(t: torch.Tensor) -> torch.Tensor:
    """Snap to float16's grid: float64 noise from thread count or BLAS (~1e-16) can then never change a
    stored weight, so `random:SEED` weights are bit-identical on every machine."""
    return t.to(torch.float16).to(torch.float32)
