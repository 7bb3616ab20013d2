"""Media preparation: raw decoded samples or pixels -> what a codec takes (its sample rate and channel
count; its proc_size), usable without loading any model.

Two places prepare, and a shard's encode policy records which (`prepare_on`, uti.codecs.batching):

* "reader": the CPU read tasks (`prepare_waveform`, and PIL's bicubic resize in `to_rgb_array`);
* "device": the codec actor on its own device, GPU or CPU (`prepare_media`): the read tasks only decode,
  and resampling, channel mixing and resizing run where the encode runs.

Audio is the same torchaudio resample and channel rule on both, so on a CPU the two give equal bits;
on a GPU the same ops have other numerics. Images differ on every device: torch's antialiased bicubic
is not PIL's (other filter support, float32, rounding), so their tokens differ and verify prepares a
sample the way its shard's policy says (`prepare_media` on verify's device).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uti.codecs.vq_image import resize_geometry, to_rgb, to_rgb_array

__all__ = ["prepare_waveform", "to_rgb_array", "to_rgb", "prepare_media", "prepare_audio", "prepare_image",
           "to_device"]  # to_rgb_array: the image half of preparation in the reader


def prepare_waveform(wav: np.ndarray | torch.Tensor, sample_rate: int, *, target_rate: int, channels: int) -> torch.Tensor:
    """(channels, samples) or (samples,) at any rate -> float32 (channels, samples) at target_rate.

    Channel counts that differ are downmixed to mono (and copied to both sides for a stereo codec):
    never a guessed channel layout.
    """
    x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
    if x.dim() == 1:
        x = x[None]
    return _mix_and_resample(x, sample_rate, target_rate=target_rate, channels=channels)


def _mix_and_resample(x: torch.Tensor, sample_rate: int, *, target_rate: int, channels: int) -> torch.Tensor:
    """The channel rule and the resample, on x's device: the one definition both places run."""
    import torchaudio.functional as AF

    if x.shape[0] != channels:
        x = x.mean(dim=0, keepdim=True).repeat(channels, 1)
    if int(sample_rate) != int(target_rate):
        x = AF.resample(x, int(sample_rate), int(target_rate))
    return x.contiguous()


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """A contiguous CPU tensor on `array`'s memory, or on a copy where that memory is read-only (a
    zero-copy view of Ray's object store, which torch must not alias)."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: through pinned memory and without blocking the caller on a GPU (the
    copy is queued on the current stream, so the ops queued after it see the data); as it is on a CPU,
    where pinning buys nothing and needs a CUDA driver."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def prepare_audio(raw: np.ndarray, source_rate: int, *, target_rate: int, channels: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Raw float32 (channels, samples) at `source_rate` (sharding.media.load_media(prepare=False)) ->
    float32 (channels, samples) at target_rate on `device`.

    The samples travel as the decoder made them, (samples, channels) in memory, and are mixed as the
    transpose of that buffer: the layout prepare_waveform sees in the reader. A channel mean over 5-7
    channels sums in another order on a contiguous (channels, samples) copy, so the layout is fixed here,
    whatever layout the object store delivered; on a CPU the result equals prepare_waveform's bit for bit.
    """
    wav = np.asarray(raw, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[1] < 1:
        raise ValueError(f"audio to prepare must be (channels, samples) with samples, got shape {wav.shape}")
    host = host_tensor(wav.T)  # (samples, channels), as decoded
    x = to_device(host, torch.device(device)).T
    return _mix_and_resample(x, source_rate, target_rate=target_rate, channels=channels)


def prepare_image(raw: np.ndarray, size: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Raw uint8 RGB (H, W, 3) at its source size (after to_rgb) -> uint8 (size, size, 3) on `device`.

    The exact rule: the geometry of to_rgb_array (resize_geometry: short side to `size`, centred crop),
    resized by torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False) in
    float32 on (1, 3, H, W), then rounded half to even and clamped to [0, 255]. An image already at the
    resized size is only cropped. Not PIL's numerics (see the module doc); deterministic on one device.
    """
    pixels = np.asarray(raw)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise ValueError(f"an image to prepare must be uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    nw, nh, left, top = resize_geometry(w, h, size)
    x = to_device(host_tensor(pixels), torch.device(device))
    if (nh, nw) != (h, w):
        y = torch.nn.functional.interpolate(x.permute(2, 0, 1)[None].float(), size=(nh, nw), mode="bicubic",
                                            align_corners=False, antialias=True)
        x = y.round().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return x[top: top + size, left: left + size].contiguous()


def prepare_media(modality: str, raw: Any, source_rate: int | None = None, *, target_rate: int | None = None,
                  channels: int | None = None, proc_size: int | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The one entry point of preparation on a device (the codec actor's, and verify's for a shard
    whose policy says prepare_on "device"): audio -> float32 (channels, samples) at target_rate, image ->
    uint8 (proc_size, proc_size, 3), on `device`."""
    if modality == "audio":
        if source_rate is None or target_rate is None or channels is None:
            raise ValueError("preparing audio needs source_rate, target_rate and channels")
        return prepare_audio(raw, source_rate, target_rate=target_rate, channels=channels, device=device)
    if modality == "image":
        if proc_size is None:
            raise ValueError("preparing an image needs proc_size")
        return prepare_image(raw, proc_size, device=device)
    raise ValueError(f"no preparation for modality {modality!r} (audio or image)")
