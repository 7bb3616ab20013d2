"""`uti audit`: the Stage-1 audit bundle for a codec config.

It proves, on small assets, that the token space is well formed and stable, that each modality
encodes deterministically (and identically alone or in a batch), that tokens sit in their ranges with
the shapes meta promises, that decode works strictly from meta, that the loaded models report the
sizes the token space records, and measures reconstruction quality (optionally gated on a baseline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from uti import FORMAT_VERSION, __version__
from uti.assets import default_audio_assets, default_image_assets
from uti.config import load_config
from uti.errors import ConfigError, DecodeUnavailable, UTIError
from uti.metrics import log_mel_l1, mae, psnr, snr_db, ssim
from uti.token_space import TokenSpace
from uti.tokenizer import UnifiedTokenizer

log = logging.getLogger(__name__)

# Regression limits against a baseline report: (metric, direction, tolerance kind, amount).
BASELINE_LIMITS = (
    ("audio.snr_db", "min", "abs", 1.0),
    ("audio.log_mel_l1", "max", "rel", 0.05),
    ("image.psnr", "min", "abs", 0.5),
    ("image.ssim", "min", "abs", 0.02),
)
TEXT_SAMPLES = ("A dog barks twice, then a car passes.", "Bäckerei, \"früh\" am Morgen — 朝のパン屋", "")


@dataclass(kw_only=True)
class Check:
    name: str
    ok: bool
    hard: bool = True
    detail: str = ""

    def to_dict(self) -> dict:
        return {"ok": bool(self.ok), "hard": self.hard, "detail": self.detail}


@dataclass(kw_only=True)
class AuditResult:
    report: dict[str, Any]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks if c.hard)


def _guard(checks: list[Check], name: str, fn: Callable[[], Any], *, hard: bool = True) -> Any:
    """Run one check; an exception is a failed check with its message, never a crashed audit."""
    try:
        result = fn()
    except UTIError as exc:
        checks.append(Check(name=name, ok=False, hard=hard, detail=f"{type(exc).__name__}: {exc}"))
        return None
    if isinstance(result, tuple):
        ok, detail = result
        checks.append(Check(name=name, ok=bool(ok), hard=hard, detail=detail))
    else:
        checks.append(Check(name=name, ok=bool(result), hard=hard))
    return result


def load_assets(assets: Path | None, *, image_size: int) -> tuple[dict[str, tuple[np.ndarray, int]], dict[str, Any]]:
    """Audio (name -> (mono/multichannel array, rate)) and images (name -> PIL image or uint8 array)."""
    if assets is None:
        return default_audio_assets(24000), default_image_assets(max(image_size * 2, 64))
    import soundfile as sf
    from PIL import Image

    assets = Path(assets)
    if not assets.is_dir():
        raise ConfigError(f"--assets {assets}: not a directory; give a folder of .wav/.flac and .png/.jpg files")
    audio, images = {}, {}
    for path in sorted(assets.iterdir()):
        suffix = path.suffix.lower()
        if suffix in (".wav", ".flac", ".ogg"):
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            audio[path.name] = (data.T, rate)
        elif suffix in (".png", ".jpg", ".jpeg", ".webp"):
            with Image.open(path) as im:
                im.load()
                images[path.name] = im.copy()
    if not audio and not images:
        raise ConfigError(f"--assets {assets}: no .wav/.flac/.ogg or .png/.jpg files found")
    return audio, images


def _ids_sha(named_ids: dict[str, np.ndarray]) -> str:
    """sha256sum-style lines over the uint32 little-endian bytes of each asset's tokens."""
    lines = [f"{hashlib.sha256(ids.astype('<u4').tobytes()).hexdigest()}  {name}" for name, ids in named_ids.items()]
    return "\n".join(lines) + "\n"


@dataclass(kw_only=True)
class MediaAudit:
    """What auditing one media modality gives: its checks (in report order), its metrics, the token IDs
    of each asset (for the `{modality}_tokens.sha256` file) and the preview pieces (recon.wav / recon.png)."""

    modality: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    ids: dict[str, np.ndarray] = field(default_factory=dict)
    previews: list[np.ndarray] = field(default_factory=list)


def run_audit(*, out: Path, config: str | None = None, assets: Path | None = None,
              decode_mode: str = "deterministic", baseline: Path | None = None) -> AuditResult:
    _check_decode_mode(decode_mode)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config)
    tok = UnifiedTokenizer(cfg)
    checks = audit_token_space(tok, cfg, out)
    twin = UnifiedTokenizer(cfg)  # a second load: determinism must hold across instances, not only calls
    _guard(checks, "determinism.weights", lambda: (twin.space.id == tok.space.id,
                                                   "a fresh load gives the same token-space ID"))
    audio_assets, image_assets = load_assets(assets, image_size=tok.image.proc_size[0] if tok.image else 64)
    if tok.text:  # a config without text: has no text range to check
        checks += audit_text(tok, twin, exact=cfg.text.kind == "byte")
    audio = audit_audio(tok, twin, audio_assets) if tok.audio and audio_assets else MediaAudit(modality="audio")
    image = audit_image(tok, twin, image_assets) if tok.image and image_assets else MediaAudit(modality="image")
    metrics: dict[str, float] = {}
    for media in (audio, image):
        checks += media.checks
        metrics.update(media.metrics)
    baseline_info = _gate_on_baseline(Path(baseline), metrics, checks) if baseline is not None else None
    _write_bundle(out, tok, audio, image)
    report = {
        "format": "uti.audit", "version": FORMAT_VERSION, "producer": f"uti {__version__}",
        "token_space_id": tok.space.id, "decode_mode": decode_mode, "config": cfg.to_dict(),
        "codecs": {m: {"name": c.name, "weights": c.weights, "fingerprint": c.fingerprint}
                   for m, c in tok.space.codecs.items()},
        "assets": {"audio": sorted(audio.ids), "image": sorted(image.ids),
                   "source": str(assets) if assets else "built-in"},
        "checks": {c.name: c.to_dict() for c in checks},
        "metrics": metrics,
        "baseline": baseline_info,
        "passed": all(c.ok for c in checks if c.hard),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "uti": __version__},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=_json_number) + "\n")
    return AuditResult(report=report, checks=checks)


def _check_decode_mode(decode_mode: str) -> None:
    if decode_mode not in ("deterministic", "diffusion"):
        raise ConfigError(f"--decode-mode {decode_mode!r}: choose deterministic or diffusion")
    if decode_mode == "diffusion":
        raise ConfigError(
            "--decode-mode diffusion: the configured codecs have no diffusion decoder (every codec uti ships "
            "decodes deterministically); run with --decode-mode deterministic"
        )


def audit_token_space(tok: UnifiedTokenizer, cfg, out: Path) -> list[Check]:
    """Write the token space to `out` and check it reloads byte for byte, is valid, and records the sizes
    the loaded models (and the config) have."""
    checks: list[Check] = []
    space = tok.space
    space.write(out)

    def roundtrip() -> tuple[bool, str]:
        loaded = TokenSpace.load(out)
        same = loaded.canonical_json() == space.canonical_json() == (out / "token_space.json").read_bytes()
        return same and loaded.id == space.id, f"id {space.id}"

    _guard(checks, "token_space.roundtrip", roundtrip)
    _guard(checks, "token_space.valid", lambda: (space.validate() is None, f"vocab_size {space.vocab_size}"))
    _guard(checks, "runtime_size_match", lambda: (space.check_runtime(tok.runtime_sizes()) is None,
                                                 json.dumps(tok.runtime_sizes(), sort_keys=True)))
    _guard(checks, "config_size_match", lambda: _config_sizes_match(cfg, tok))
    return checks


def audit_text(tok: UnifiedTokenizer, twin: UnifiedTokenizer, *, exact: bool) -> list[Check]:
    """Text encodes the same on two loads; decode(encode(s)) == s is a hard check only when `exact`
    (the byte codec promises identity; subword tokenizers may normalize)."""
    checks: list[Check] = []
    _guard(checks, "determinism.text", lambda: (
        not [s for s in TEXT_SAMPLES if not np.array_equal(tok.encode_text(s), twin.encode_text(s))],
        f"{len(TEXT_SAMPLES)} strings"))
    _guard(checks, "decode.text_roundtrip", lambda: (all(tok.decode_text(tok.encode_text(s)) == s for s in TEXT_SAMPLES),
                                                     "decode(encode(s)) == s"), hard=exact)
    return checks


def _encode_checks(checks: list[Check], modality: str, noun: str, items: list, batch: list,
                   twin_batch: Callable[[list], list], single: Callable[[Any], tuple]) -> None:
    """The two encode checks every media modality gets: equal tokens from a second load, and each item
    alone equal to it in the batch."""
    _guard(checks, f"determinism.{modality}", lambda: (all(
        np.array_equal(a, b) for (a, _), (b, _) in zip(batch, twin_batch(items))), f"{len(items)} {noun}s, two loads"))
    _guard(checks, f"batch_equals_single.{modality}", lambda: (all(
        np.array_equal(ids, single(x)[0]) for x, (ids, _) in zip(items, batch)), f"each {noun} alone == in the batch"))


def _idempotence(modality: str, agreement: list[float]) -> Check:
    """encode(decode(tokens)) == tokens: reported, never gating (a lossy codec need not be idempotent)."""
    return Check(name=f"idempotence.{modality}", ok=all(v == 1.0 for v in agreement), hard=False,
                 detail=f"encode(decode(tokens)) agreement {np.mean(agreement):.3f}")


def audit_audio(tok: UnifiedTokenizer, twin: UnifiedTokenizer, assets: dict[str, tuple[np.ndarray, int]]) -> MediaAudit:
    """Encode checks, ranges and shapes by the token space's audio layout, strict decode, and the
    reconstruction metrics (SNR, MAE, log-mel L1, a re-encode round trip)."""
    result = MediaAudit(modality="audio")
    checks, codec = result.checks, tok.audio
    clips = [tok.prepare_audio(a, sr) for a, sr in assets.values()]
    batch = tok.encode_audios(clips)
    result.ids = {n: ids for n, (ids, _) in zip(assets, batch)}
    _encode_checks(checks, "audio", "clip", clips, batch, twin.encode_audios, tok.encode_audio)
    layout = tok.space.layout("audio")
    _guard(checks, "ranges.audio", lambda: (all(tok.check_audio_tokens(i, m) is not None for i, m in batch),
                                            f"every ID on its own level, {layout.kind} layout"))
    _guard(checks, "shape.audio", lambda: (all(
        i.size == layout.expected_len(m) and m["n_frames"] == codec.expected_frames(m["n_samples"])
        for i, m in batch), f"len == n_frames * {layout.tokens_per_frame} tokens per frame"))
    references = [_at_output_rate(tok, clip) for clip in clips]
    measured = [_measure_audio(tok, ref, ids, meta) for ref, (ids, meta) in zip(references, batch)]
    decoded = [wav for wav, _ in measured]
    # recon.wav (at the decoder's rate): each source clip, a short gap, its reconstruction, a longer gap.
    rate = codec.output_sample_rate
    result.previews = [np.concatenate([ref.numpy(), _silence(ref, rate // 4), wav.numpy(), _silence(ref, rate // 2)],
                                      axis=1) for ref, wav in zip(references, decoded)]
    _guard(checks, "decode.audio", lambda: (all(
        abs(w.shape[-1] - codec.decoded_samples(m["n_samples"])) <= codec.output_hop_length and w.shape[0] == m["channels"]
        for w, (_, m) in zip(decoded, batch)), f"sample rate {rate}, length within one frame"))
    result.metrics = _means("audio", [m for _, m in measured])
    checks.append(_idempotence("audio", [m["token_idempotence"] for _, m in measured]))
    return result


def _at_output_rate(tok: UnifiedTokenizer, clip: torch.Tensor) -> torch.Tensor:
    """The source clip as the decoder's output is compared with it: at the decoder's rate."""
    codec = tok.audio
    if codec.output_sample_rate == codec.sample_rate:
        return clip
    from uti.preprocess import prepare_waveform

    return prepare_waveform(clip, codec.sample_rate, target_rate=codec.output_sample_rate, channels=codec.channels)


def _measure_audio(tok: UnifiedTokenizer, clip: torch.Tensor, ids: np.ndarray, meta: dict) -> tuple[torch.Tensor, dict]:
    """Decode one clip (`clip` at the decoder's rate) from its tokens: the waveform, its reconstruction
    metrics, and how a re-encode of the decoding agrees with the decoding and with the tokens."""
    codec = tok.audio
    wav = tok.decode_audio(ids, meta)
    ids2, meta2 = tok.encode_audio(tok.prepare_audio(wav, codec.output_sample_rate))
    wav2 = tok.decode_audio(ids2, meta2)
    return wav, {"snr_db": snr_db(clip, wav), "mae": mae(clip, wav), "log_mel_l1": log_mel_l1(clip, wav, codec.output_sample_rate),
                 "roundtrip_snr_db": snr_db(wav, wav2), "roundtrip_mae": mae(wav, wav2),
                 "token_idempotence": float(np.mean(ids2 == ids)) if ids2.size == ids.size else 0.0}


def _measure_image(tok: UnifiedTokenizer, arr: np.ndarray, ids: np.ndarray, meta: dict) -> tuple[np.ndarray, dict]:
    """Decode one image from its tokens: the reconstruction, its metrics, and re-encode agreement."""
    rec = tok.decode_image(ids, meta)
    ids2, _ = tok.encode_image(rec)
    return rec, {"psnr": psnr(arr, rec), "ssim": ssim(arr, rec), "token_idempotence": float(np.mean(ids2 == ids))}


def _means(modality: str, measured: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the assets, named `{modality}.{metric}` as the report and baselines name them."""
    return {f"{modality}.{k}": float(np.mean([m[k] for m in measured])) for k in measured[0]}


def _silence(clip: torch.Tensor, samples: int) -> np.ndarray:
    return np.zeros((clip.shape[0], samples), np.float32)


def audit_image(tok: UnifiedTokenizer, twin: UnifiedTokenizer, assets: dict[str, Any]) -> MediaAudit:
    """Encode checks, ranges and shapes by the token space's image layout, strict decode at proc_size,
    and the reconstruction metrics (PSNR, SSIM, re-encode agreement)."""
    from PIL import Image

    from uti.codecs.vq_image import to_rgb_array

    result = MediaAudit(modality="image")
    checks = result.checks
    size = tok.image.proc_size[0]
    arrays = [to_rgb_array(im if isinstance(im, Image.Image) else Image.fromarray(im), size) for im in assets.values()]
    batch = tok.encode_images(arrays)
    result.ids = {n: ids for n, (ids, _) in zip(assets, batch)}
    _encode_checks(checks, "image", "image", arrays, batch, twin.encode_images, tok.encode_image)
    _guard(checks, "ranges.image", lambda: (all(tok.check_image_tokens(i, m) is not None for i, m in batch),
                                            "IDs in the image range"))
    _guard(checks, "shape.image", lambda: (all(i.size == tok.space.layout("image").expected_len(m) for i, m in batch),
                                           "len == the layout's count (grid_h * grid_w, or n_tokens)"))
    try:
        measured = [_measure_image(tok, arr, ids, meta) for arr, (ids, meta) in zip(arrays, batch)]
    except DecodeUnavailable as exc:  # e.g. Chameleon or SEED without their decoder: encode is still audited
        checks.append(Check(name="decode.image", ok=True, hard=False, detail=f"skipped: {exc}"))
        return result
    recons = [rec for rec, _ in measured]
    result.previews = [np.concatenate([arr, rec], axis=1) for arr, rec in zip(arrays, recons)]  # source | recon
    _guard(checks, "decode.image", lambda: (all(list(r.shape[:2]) == m["proc_size"] for r, (_, m) in zip(recons, batch)),
                                            f"size {size}x{size}"))
    result.metrics = _means("image", [m for _, m in measured])
    checks.append(_idempotence("image", [m["token_idempotence"] for _, m in measured]))
    return result


def _write_bundle(out: Path, tok: UnifiedTokenizer, audio: MediaAudit, image: MediaAudit) -> None:
    """The token hashes of every asset and the previews (recon.wav, recon.png) next to report.json."""
    (out / "audio_tokens.sha256").write_text(_ids_sha(audio.ids))
    (out / "image_tokens.sha256").write_text(_ids_sha(image.ids))
    if audio.previews:
        import soundfile as sf

        sf.write(str(out / "recon.wav"), np.concatenate(audio.previews, axis=1).T, tok.audio.output_sample_rate,
                 subtype="PCM_16")
    if image.previews:
        from PIL import Image

        Image.fromarray(np.concatenate(image.previews, axis=0)).save(out / "recon.png")


def _json_number(value: Any) -> Any:
    return float(value)


def _config_sizes_match(cfg, tok: UnifiedTokenizer) -> tuple[bool, str]:
    from uti.tokenizer import config_size_mismatches

    problems = config_size_mismatches(cfg, tok)
    promised = {m: getattr(cfg, m).promised_sizes() for m in ("image", "audio") if getattr(cfg, m) is not None}
    return not problems, "; ".join(problems) or f"config and loaded models agree on {json.dumps(promised, sort_keys=True)}"


def _gate_on_baseline(path: Path, metrics: dict[str, float], checks: list[Check]) -> dict:
    try:
        base = json.loads(path.read_text())
        base_metrics = base["metrics"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--baseline {path}: not a readable audit report.json with 'metrics' ({exc})") from None
    limits = {}
    for name, direction, kind, amount in BASELINE_LIMITS:
        if name not in base_metrics or name not in metrics:
            continue
        b = float(base_metrics[name])
        limit = (b - amount if direction == "min" else b + amount) if kind == "abs" else \
            (b * (1 - amount) if direction == "min" else b * (1 + amount))
        value = metrics[name]
        ok = value >= limit if direction == "min" else value <= limit
        limits[name] = {"value": value, "baseline": b, "limit": limit, "ok": ok}
        checks.append(Check(name=f"baseline.{name}", ok=ok, detail=(
            f"{value:.4f} {'>=' if direction == 'min' else '<='} {limit:.4f} (baseline {b:.4f})"
            if ok else f"REGRESSED: {value:.4f} {'<' if direction == 'min' else '>'} limit {limit:.4f} (baseline {b:.4f})")))
    return {"path": str(path), "limits": limits}


def format_table(result: AuditResult) -> str:
    rows = [(c.name, "ok" if c.ok else ("FAIL" if c.hard else "warn"), c.detail) for c in result.checks]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{n.ljust(width)}  {s.ljust(6)}  {d[:90]}" for n, s, d in rows]
    if result.report["metrics"]:
        lines.append("")
        lines += [f"{k.ljust(width)}  {v:.4f}" for k, v in sorted(result.report["metrics"].items())]
    lines.append("")
    lines.append(f"token space {result.report['token_space_id'][:16]}  ->  {'PASSED' if result.passed else 'FAILED'}")
    return "\n".join(lines)


