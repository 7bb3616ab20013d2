"""The codec contract: encode(batch) -> codes (+ meta), decode(codes, meta) -> signal, and every size
the token space records exposed as properties read from the loaded model (runtime introspection)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from uti.token_space import VERSION, CodecDescriptor


@dataclass(frozen=True, kw_only=True)
class EncodedAudio:
    """Codes of one clip: (n_frames, n_q) local code indices, plus what decode needs beyond sizes."""

    codes: np.ndarray
    n_samples: int  # at the codec's sample rate
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. per-segment scales of normalized models


class AudioCodec(ABC):
    modality = "audio"

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def channels(self) -> int: ...

    @property
    @abstractmethod
    def n_q(self) -> int: ...

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def frame_rate(self) -> float: ...

    @property
    @abstractmethod
    def hop_length(self) -> int: ...

    @abstractmethod
    def encode(self, clips: Sequence[torch.Tensor]) -> list[EncodedAudio]:
        """Encode clips of shape (channels, n_samples) at `sample_rate`. Batching never changes the codes."""

    @abstractmethod
    def decode(self, encoded: EncodedAudio) -> torch.Tensor:
        """(channels, n_samples) waveform at `sample_rate`."""

    @abstractmethod
    def descriptor(self, version: int = VERSION) -> CodecDescriptor:
        """What a token space of `version` records about this codec (older versions: for comparing a
        loaded codec with data made by an older uti)."""

    def expected_frames(self, n_samples: int, extra: dict[str, Any] | None = None) -> int:
        """How many frames a clip of `n_samples` must have; shape checks use it."""
        return -(-n_samples // self.hop_length)

    def runtime_sizes(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate, "channels": self.channels, "n_q": self.n_q,
            "codebook_size": self.codebook_size, "frame_rate": self.frame_rate, "hop_length": self.hop_length,
        }


class ImageCodec(ABC):
    modality = "image"

    @property
    @abstractmethod
    def proc_size(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def grid(self) -> tuple[int, int]: ...

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @abstractmethod
    def encode(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H, W, 3) images at `proc_size` -> (grid_h, grid_w) local code indices each."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(grid_h, grid_w) codes -> uint8 (H, W, 3) image at `proc_size`."""

    @abstractmethod
    def descriptor(self, version: int = VERSION) -> CodecDescriptor:
        """What a token space of `version` records about this codec (older versions: for comparing a
        loaded codec with data made by an older uti)."""

    def runtime_sizes(self) -> dict[str, Any]:
        return {"proc_size": list(self.proc_size), "grid": list(self.grid), "codebook_size": self.codebook_size}


class TextCodec(ABC):
    modality = "text"

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def descriptor(self, version: int = VERSION) -> CodecDescriptor:
        """What a token space of `version` records about this codec (older versions: for comparing a
        loaded codec with data made by an older uti)."""

    def runtime_sizes(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}
