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
from uti.errors import ConfigError, UTIError
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


def run_audit(*, out: Path, config: str | None = None, assets: Path | None = None,
              decode_mode: str = "deterministic", baseline: Path | None = None) -> AuditResult:
    if decode_mode not in ("deterministic", "diffusion"):
        raise ConfigError(f"--decode-mode {decode_mode!r}: choose deterministic or diffusion")
    if decode_mode == "diffusion":
        raise ConfigError(
            "--decode-mode diffusion: the configured codecs have no diffusion decoder (every codec uti ships "
            "decodes deterministically); run with --decode-mode deterministic"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config)
    checks: list[Check] = []
    tok = UnifiedTokenizer(cfg)
    space = tok.space
    metrics: dict[str, float] = {}

    # ---- token space ------------------------------------------------------------------------------
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

    twin = UnifiedTokenizer(cfg)  # a second load: determinism must hold across instances, not only calls
    _guard(checks, "determinism.weights", lambda: (twin.space.id == space.id, "a fresh load gives the same token-space ID"))

    audio_assets, image_assets = load_assets(assets, image_size=tok.image.proc_size[0] if tok.image else 64)

    # ---- text -----------------------------------------------------------------------------------
    def text_checks() -> tuple[bool, str]:
        bad = [s for s in TEXT_SAMPLES if not np.array_equal(tok.encode_text(s), twin.encode_text(s))]
        return not bad, f"{len(TEXT_SAMPLES)} strings"

    if tok.text:  # a config without text: has no text range to check
        _guard(checks, "determinism.text", text_checks)
        exact = cfg.text.kind == "byte"  # subword tokenizers may normalize; only the byte codec promises identity
        _guard(checks, "decode.text_roundtrip", lambda: (all(tok.decode_text(tok.encode_text(s)) == s
                                                             for s in TEXT_SAMPLES), "decode(encode(s)) == s"), hard=exact)

    # ---- audio ----------------------------------------------------------------------------------
    audio_ids: dict[str, np.ndarray] = {}
    recon_wavs: list[np.ndarray] = []
    if tok.audio and audio_assets:
        names = list(audio_assets)
        clips = [tok.prepare_audio(a, sr) for a, sr in audio_assets.values()]
        batch = tok.encode_audios(clips)
        audio_ids = {n: ids for n, (ids, _) in zip(names, batch)}
        _guard(checks, "determinism.audio", lambda: (all(
            np.array_equal(a, b) for (a, _), (b, _) in zip(batch, twin.encode_audios(clips))), f"{len(clips)} clips, two loads"))
        _guard(checks, "batch_equals_single.audio", lambda: (all(
            np.array_equal(ids, tok.encode_audio(c)[0]) for c, (ids, _) in zip(clips, batch)), "each clip alone == in the batch"))
        audio_layout = space.layout("audio")
        _guard(checks, "ranges.audio", lambda: (all(tok.check_audio_tokens(i, m) is not None for i, m in batch),
                                                f"every ID on its own level, {audio_layout.kind} layout"))
        _guard(checks, "shape.audio", lambda: (all(
            i.size == audio_layout.expected_len(m) and m["n_frames"] == tok.audio.expected_frames(m["n_samples"])
            for i, m in batch), f"len == n_frames * {audio_layout.tokens_per_frame} tokens per frame"))
        snrs, maes, mels, rt_snr, rt_mae, idem = [], [], [], [], [], []
        decoded = []
        for clip, (ids, meta) in zip(clips, batch):
            wav = tok.decode_audio(ids, meta)
            decoded.append(wav)
            snrs.append(snr_db(clip, wav))
            maes.append(mae(clip, wav))
            mels.append(log_mel_l1(clip, wav, tok.audio.sample_rate))
            ids2, meta2 = tok.encode_audio(wav)
            wav2 = tok.decode_audio(ids2, meta2)
            rt_snr.append(snr_db(wav, wav2))
            rt_mae.append(mae(wav, wav2))
            idem.append(float(np.mean(ids2 == ids)) if ids2.size == ids.size else 0.0)
            recon_wavs.append(np.concatenate([clip.numpy(), np.zeros((clip.shape[0], tok.audio.sample_rate // 4), np.float32),
                                              wav.numpy(), np.zeros((clip.shape[0], tok.audio.sample_rate // 2), np.float32)], axis=1))
        _guard(checks, "decode.audio", lambda: (all(
            abs(w.shape[-1] - m["n_samples"]) <= tok.audio.hop_length and w.shape[0] == m["channels"]
            for w, (_, m) in zip(decoded, batch)), f"sample rate {tok.audio.sample_rate}, length within one frame"))
        metrics.update({"audio.snr_db": float(np.mean(snrs)), "audio.mae": float(np.mean(maes)),
                        "audio.log_mel_l1": float(np.mean(mels)), "audio.roundtrip_snr_db": float(np.mean(rt_snr)),
                        "audio.roundtrip_mae": float(np.mean(rt_mae)), "audio.token_idempotence": float(np.mean(idem))})
        checks.append(Check(name="idempotence.audio", ok=all(v == 1.0 for v in idem), hard=False,
                            detail=f"encode(decode(tokens)) agreement {np.mean(idem):.3f}"))

    # ---- image ----------------------------------------------------------------------------------
    image_ids: dict[str, np.ndarray] = {}
    panels: list[np.ndarray] = []
    if tok.image and image_assets:
        from PIL import Image

        from uti.codecs.vq_image import to_rgb_array

        size = tok.image.proc_size[0]
        names = list(image_assets)
        arrays = [to_rgb_array(im if isinstance(im, Image.Image) else Image.fromarray(im), size) for im in image_assets.values()]
        batch = tok.encode_images(arrays)
        image_ids = {n: ids for n, (ids, _) in zip(names, batch)}
        _guard(checks, "determinism.image", lambda: (all(
            np.array_equal(a, b) for (a, _), (b, _) in zip(batch, twin.encode_images(arrays))), f"{len(arrays)} images, two loads"))
        _guard(checks, "batch_equals_single.image", lambda: (all(
            np.array_equal(ids, tok.encode_image(a)[0]) for a, (ids, _) in zip(arrays, batch)), "each image alone == in the batch"))
        _guard(checks, "ranges.image", lambda: (all(tok.check_image_tokens(i, m) is not None for i, m in batch), "IDs in the image range"))
        _guard(checks, "shape.image", lambda: (all(i.size == tok.space.layout("image").expected_len(m) for i, m in batch),
                                               "len == the layout's count (grid_h * grid_w, or n_tokens)"))
        ps, ss, idem = [], [], []
        recons = []
        for arr, (ids, meta) in zip(arrays, batch):
            rec = tok.decode_image(ids, meta)
            recons.append(rec)
            ps.append(psnr(arr, rec))
            ss.append(ssim(arr, rec))
            ids2, _ = tok.encode_image(rec)
            idem.append(float(np.mean(ids2 == ids)))
            panels.append(np.concatenate([arr, rec], axis=1))
        _guard(checks, "decode.image", lambda: (all(list(r.shape[:2]) == m["proc_size"] for r, (_, m) in zip(recons, batch)),
                                                f"size {size}x{size}"))
        metrics.update({"image.psnr": float(np.mean(ps)), "image.ssim": float(np.mean(ss)),
                        "image.token_idempotence": float(np.mean(idem))})
        checks.append(Check(name="idempotence.image", ok=all(v == 1.0 for v in idem), hard=False,
                            detail=f"encode(decode(tokens)) agreement {np.mean(idem):.3f}"))

    # ---- baseline -------------------------------------------------------------------------------
    baseline_info = None
    if baseline is not None:
        baseline_info = _gate_on_baseline(Path(baseline), metrics, checks)

    # ---- bundle ---------------------------------------------------------------------------------
    (out / "audio_tokens.sha256").write_text(_ids_sha(audio_ids))
    (out / "image_tokens.sha256").write_text(_ids_sha(image_ids))
    if recon_wavs:
        import soundfile as sf

        sf.write(str(out / "recon.wav"), np.concatenate(recon_wavs, axis=1).T, tok.audio.sample_rate, subtype="PCM_16")
    if panels:
        from PIL import Image

        Image.fromarray(np.concatenate(panels, axis=0)).save(out / "recon.png")
    report = {
        "format": "uti.audit", "version": FORMAT_VERSION, "producer": f"uti {__version__}",
        "token_space_id": space.id, "decode_mode": decode_mode, "config": cfg.to_dict(),
        "codecs": {m: {"name": c.name, "weights": c.weights, "fingerprint": c.fingerprint} for m, c in space.codecs.items()},
        "assets": {"audio": sorted(audio_ids), "image": sorted(image_ids), "source": str(assets) if assets else "built-in"},
        "checks": {c.name: c.to_dict() for c in checks},
        "metrics": metrics,
        "baseline": baseline_info,
        "passed": all(c.ok for c in checks if c.hard),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "uti": __version__},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=_json_number) + "\n")
    return AuditResult(report=report, checks=checks)


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


