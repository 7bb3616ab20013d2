"""Codec-independent media preparation, usable without loading any model (e.g. in CPU read tasks)."""

from __future__ import annotations

import numpy as np
import torch

from uti.codecs.vq_image import to_rgb_array

__all__ = ["prepare_waveform", "to_rgb_array"]  # to_rgb_array: the image half of preparation


def prepare_waveform(wav: np.ndarray | torch.Tensor, sample_rate: int, *, target_rate: int, channels: int) -> torch.Tensor:
    """(channels, samples) or (samples,) at any rate -> float32 (channels, samples) at target_rate.

    Channel counts that differ are downmixed to mono (and copied to both sides for a stereo codec):
    never a guessed channel layout.
    """
    import torchaudio.functional as AF

    x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
    if x.dim() == 1:
        x = x[None]
    if x.shape[0] != channels:
        x = x.mean(dim=0, keepdim=True).repeat(channels, 1)
    if int(sample_rate) != int(target_rate):
        x = AF.resample(x, int(sample_rate), int(target_rate))
    return x.contiguous()
