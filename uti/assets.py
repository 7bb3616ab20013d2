"""Small deterministic assets for the audit and the demo: tones, chirps, noise, speech-like signals,
and simple scenes. Same seed, same bytes, on every machine."""

from __future__ import annotations


import numpy as np


def synth_audio(kind: str, *, seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """float32 mono in [-1, 1]. kinds: tone, chirp, noise, speechlike."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sample_rate)))
    t = np.arange(n) / sample_rate
    if kind == "tone":
        f = rng.uniform(180, 900)
        x = 0.5 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2 * f * t)
    elif kind == "chirp":
        f0, f1 = rng.uniform(100, 400), rng.uniform(1500, 5000)
        x = 0.6 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-3))))
    elif kind == "noise":
        x = rng.standard_normal(n) * 0.25
        x = np.convolve(x, np.ones(4) / 4, mode="same")  # a little coloring
    elif kind == "speechlike":
        # A glottal pulse train through moving formant-like resonances, syllable-rate envelope.
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
        phase = np.cumsum(f0 / sample_rate)
        source = (np.mod(phase, 1.0) < 0.1).astype(np.float64)
        x = np.zeros(n)
        for formant in (rng.uniform(400, 800), rng.uniform(1000, 2000), rng.uniform(2200, 3000)):
            x += np.sin(2 * np.pi * formant * t) * source
        x = np.convolve(x, np.hanning(32), mode="same")
        x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
        x = x / (np.abs(x).max() + 1e-9) * 0.6
    else:
        raise ValueError(f"unknown audio kind {kind!r}")
    fade = min(n // 2, int(0.01 * sample_rate))
    if fade:
        ramp = np.linspace(0, 1, fade)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return np.clip(x, -1, 1).astype(np.float32)


def synth_image(*, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (size, size, 3): a sky/ground gradient with a sun disc and a few boxes ("simple scenes")."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    horizon = rng.uniform(0.45, 0.7)
    sky = np.array([0.35, 0.6, 0.95]) * (1 - 0.5 * yy[..., None]) + 0.1
    ground = np.array(rng.choice([[0.2, 0.55, 0.2], [0.75, 0.65, 0.4], [0.4, 0.4, 0.45]]))
    img = np.where((yy < horizon)[..., None], sky, ground * (0.7 + 0.3 * yy[..., None]))
    sx, sy, sr = rng.uniform(0.15, 0.85), rng.uniform(0.1, horizon - 0.1), rng.uniform(0.06, 0.14)
    img[(xx - sx) ** 2 + (yy - sy) ** 2 < sr**2] = [1.0, 0.85, 0.3]
    for _ in range(int(rng.integers(1, 4))):
        bx, bw, bh = rng.uniform(0.05, 0.85), rng.uniform(0.08, 0.2), rng.uniform(0.1, 0.35)
        color = rng.uniform(0.2, 0.9, 3)
        img[(xx > bx) & (xx < bx + bw) & (yy > horizon - bh) & (yy < horizon + 0.02)] = color
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


AUDIO_KINDS = ("tone", "chirp", "noise", "speechlike")


def default_audio_assets(sample_rate: int) -> dict[str, tuple[np.ndarray, int]]:
    return {f"{kind}.wav": (synth_audio(kind, seconds=secs, sample_rate=sample_rate, seed=i), sample_rate)
            for i, (kind, secs) in enumerate(zip(AUDIO_KINDS, (1.5, 2.0, 0.7, 2.5)))}


def default_image_assets(size: int = 128) -> dict[str, np.ndarray]:
    return {f"scene{i}.png": synth_image(size=size, seed=i) for i in range(3)}


