"""The codec contract: encode(batch) -> codes (+ meta), decode(codes, meta) -> signal, and every size
the token space records exposed as properties read from the loaded model (runtime introspection).

One abstract base per modality. An adapter subclasses it and names, as class attributes, its `kind`
(the `kind:` of its uti.yaml section) and its `settings` class (the typed section), and builds itself
with `from_settings`. Adapters are found through the `uti.codecs` entry-point group (see
uti/codecs/registry.py), so a package outside this repository can add one.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from uti.codecs.batching import (PADDING_BUCKETS, PADDING_IMAGES, PADDING_NONE, PREPARE_READER, EncodePolicy,
                                 PassLog, check_encode_batch, device_type)
from uti.errors import DecodeRefused
from uti.token_space import VERSION, CodecDescriptor, LayoutSpec, recorded_descriptor


@dataclass(frozen=True, kw_only=True)
class CodecVariant:
    """One named model of a codec kind and the sizes of its real architecture, for `uti tokenspace
    codecs`. Listing never loads weights; what a run uses is always read from the loaded model."""

    model: str  # the value of the `model:` setting that selects it ("-" when the kind has one model)
    sizes: dict[str, Any]  # e.g. sample_rate, n_q, max_n_q, codebook_size, frame_rate, proc_size, grid, layout
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class EncodedAudio:
    """Codes of one clip in layout order: (n_frames, tokens_per_frame) local code indices, column j
    belonging to level `layout_spec().pattern[j]` (frame-major codecs: (n_frames, n_q)), plus what
    decode needs beyond sizes."""

    codes: np.ndarray
    n_samples: int  # at the codec's sample rate
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. per-segment scales of normalized models


class _Codec(ABC):
    """What every modality's base shares: registration attributes, the token-space descriptor and the
    encode policy (uti.codecs.batching: items per forward pass, set after construction)."""

    modality: ClassVar[str]
    kind: ClassVar[str]  # the `kind:` that selects this adapter in uti.yaml
    settings: ClassVar[type]  # its uti.yaml section: a frozen kw-only dataclass (uti.config.*Settings)
    _encode_batch: int = 1
    _pass_log: PassLog | None = None

    @property
    def encode_batch(self) -> int:
        """Items per forward pass (uti.codecs.batching): 1 encodes each item alone at its own length."""
        return self._encode_batch

    def set_encode_batch(self, n: int) -> None:
        self._encode_batch = check_encode_batch(n, where=f"{self.modality}.encode_batch") or 1

    @property
    def pass_log(self) -> PassLog:
        """The forward passes since the caller last took the log (the actor's busy and batch figures)."""
        if self._pass_log is None:
            self._pass_log = PassLog()
        return self._pass_log

    def padding_rule(self) -> str:
        """How items are padded for a pass: recorded in the encode policy (an adapter with its own rule,
        e.g. segments, says so here)."""
        if self.encode_batch == 1:
            return PADDING_NONE
        return PADDING_BUCKETS if self.modality == "audio" else PADDING_IMAGES

    def encode_policy(self, *, prepare_on: str | None = None) -> EncodePolicy:
        """The numerics this codec encodes with, as shard headers and job.json record them."""
        kind = device_type(getattr(self, "device", "cpu"))
        return EncodePolicy(device_type=kind, encode_batch=self.encode_batch,
                            padding=self.padding_rule(), prepare_on=prepare_on or PREPARE_READER,
                            tf32=bool(kind == "cuda" and torch.backends.cuda.matmul.allow_tf32),
                            torch=str(torch.__version__))

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Any, *, device: str = "cpu") -> "_Codec":
        """Build the adapter from its typed uti.yaml section."""

    @classmethod
    def variants(cls) -> list[CodecVariant]:
        """The named models this kind offers, with their sizes (cheap: no weights are loaded)."""
        return []

    @abstractmethod
    def describe(self, version: int = VERSION) -> CodecDescriptor:
        """What a token space of `version` records about this codec: identity, weights fingerprint and
        every size and setting that changes its output (older versions: for comparing a loaded codec
        with data made by an older uti). The layout is added by `descriptor`."""

    def layout_spec(self) -> LayoutSpec | None:
        """How the codes are laid out in a sequence (None: not a media codec)."""
        return None

    def descriptor(self, version: int = VERSION) -> CodecDescriptor:
        """`describe` plus the layout, as a token space of `version` records them."""
        desc = self.describe(version)
        layout = self.layout_spec()
        if layout is None:
            return desc
        return recorded_descriptor(dataclasses.replace(desc, layout=layout), version)


class AudioCodec(_Codec):
    modality = "audio"

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def channels(self) -> int: ...

    @property
    @abstractmethod
    def n_q(self) -> int:
        """Number of quantizer levels, each its own range of the token space."""

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def frame_rate(self) -> float:
        """Frames per second; a multirate codec's frames are those of its coarsest level."""

    @property
    @abstractmethod
    def hop_length(self) -> int:
        """Samples per frame."""

    @abstractmethod
    def encode(self, clips: Sequence[torch.Tensor]) -> list[EncodedAudio]:
        """Encode clips of shape (channels, n_samples) at `sample_rate`, in passes of `encode_batch` items
        (uti.codecs.batching.plan_passes): which clips share the call never changes a clip's codes."""

    @abstractmethod
    def decode(self, encoded: EncodedAudio) -> torch.Tensor:
        """(channels, decoded_samples(n_samples)) waveform at `output_sample_rate`."""

    @property
    def output_sample_rate(self) -> int:
        """The rate decode writes at. Most codecs decode at the rate they encode; one whose decoder
        upsamples (NeuCodec: 16 kHz in, 24 kHz out) says so here, and the token space records both."""
        return self.sample_rate

    def decoded_samples(self, n_samples: int) -> int:
        """The samples decode gives back for a clip of `n_samples` at `sample_rate`: the same duration at
        `output_sample_rate`, rounded down. A decoder that only makes whole frames of a clip whose last
        samples got no frame (NeuCodec) overrides it with what it gives."""
        return int(n_samples) * self.output_sample_rate // self.sample_rate

    @property
    def output_hop_length(self) -> int:
        """Samples per frame at `output_sample_rate`: the length tolerance of a decode."""
        return -(-self.hop_length * self.output_sample_rate // self.sample_rate)

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec.frame_major(self.n_q)

    def expected_frames(self, n_samples: int, extra: dict[str, Any] | None = None) -> int:
        """How many frames a clip of `n_samples` must have; shape checks use it."""
        return -(-n_samples // self.hop_length)

    def runtime_sizes(self) -> dict[str, Any]:
        sizes = {
            "sample_rate": self.sample_rate, "channels": self.channels, "n_q": self.n_q,
            "codebook_size": self.codebook_size, "frame_rate": self.frame_rate, "hop_length": self.hop_length,
        }
        if self.output_sample_rate != self.sample_rate:  # recorded only where it differs: other spaces keep their bytes
            sizes["output_sample_rate"] = self.output_sample_rate
        return sizes


class ImageCodec(_Codec):
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
        """uint8 (H, W, 3) images at `proc_size` -> (grid_h, grid_w) local code indices each, in passes of
        exactly `encode_batch` images (dummies fill the last): the call's other images never change a code."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(grid_h, grid_w) codes -> uint8 (H, W, 3) image at `proc_size`."""

    def layout_spec(self) -> LayoutSpec:
        return LayoutSpec.grid2d()

    def runtime_sizes(self) -> dict[str, Any]:
        return {"proc_size": list(self.proc_size), "grid": list(self.grid), "codebook_size": self.codebook_size}


class TextCodec(_Codec):
    modality = "text"

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def runtime_sizes(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}


# ---- helpers adapters share ----------------------------------------------------------------------------
def check_clip(clip: Any, index: int, *, channels: int, name: str, device: torch.device) -> torch.Tensor:
    """A (channels, samples) float tensor with at least one sample, on `device` as float32."""
    if not isinstance(clip, torch.Tensor) or clip.dim() != 2:
        raise ValueError(f"clip {index}: expected a (channels, samples) tensor")
    if clip.shape[0] != channels:
        raise ValueError(f"clip {index}: {clip.shape[0]} channels, {name} takes {channels}")
    if clip.shape[1] < 1:
        raise ValueError(f"clip {index}: no samples")
    return clip.to(device, torch.float32)


def check_codes(codes: Any, *, tokens_per_frame: int, codebook_size: int, name: str) -> np.ndarray:
    """Local codes (n_frames, tokens_per_frame) inside [0, codebook_size), or DecodeRefused."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != tokens_per_frame or codes.shape[0] < 1:
        raise DecodeRefused(f"{name}: codes must be (n_frames >= 1, {tokens_per_frame}), got {codes.shape}")
    if codes.min(initial=0) < 0 or codes.max(initial=0) >= codebook_size:
        raise DecodeRefused(f"{name}: codes outside [0, {codebook_size})")
    return codes.astype(np.int64)


def check_image(image: Any, index: int, *, size: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != (size, size, 3):
        raise ValueError(f"image {index}: expected uint8 ({size}, {size}, 3), got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
