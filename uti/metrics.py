"""Reconstruction metrics for the audit: audio SNR, MAE, log-mel L1; image PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import torch


def _align(ref: torch.Tensor, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(ref.shape[-1], est.shape[-1])
    return ref[..., :n].double(), est[..., :n].double()


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    ref, est = _align(ref, est)
    noise = (ref - est).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-20) / noise)


def mae(ref: torch.Tensor, est: torch.Tensor) -> float:
    ref, est = _align(ref, est)
    return (ref - est).abs().mean().item()


def log_mel_l1(ref: torch.Tensor, est: torch.Tensor, sample_rate: int, n_mels: int = 64) -> float:
    import torchaudio

    ref, est = _align(ref, est)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=1024, hop_length=256, n_mels=n_mels, power=1.0
    ).double()
    a = torch.log(mel(ref.mean(0)) + 1e-5)
    b = torch.log(mel(est.mean(0)) + 1e-5)
    return (a - b).abs().mean().item()


def psnr(ref: np.ndarray, est: np.ndarray) -> float:
    mse = np.mean((ref.astype(np.float64) - est.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(ref: np.ndarray, est: np.ndarray) -> float:
    """Mean SSIM over channels with an 11x11 Gaussian window (sigma 1.5), as in Wang et al. 2004."""
    x = torch.from_numpy(ref.astype(np.float64)).permute(2, 0, 1)[None]
    y = torch.from_numpy(est.astype(np.float64)).permute(2, 0, 1)[None]
    c = x.shape[1]
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean().item()
