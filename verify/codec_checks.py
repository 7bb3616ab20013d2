"""Checks 7 and 8 on a seeded sample: decode the tokens, and re-encode the source and compare.

One call loads the codecs once (seconds) and then handles many sampled items, so the run pays the
load per task, not per item. Only the modalities present in the batch are loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from uti.captions import split_captions
from verify.findings import FindingLog


@dataclass(frozen=True)
class Pick:
    """One sampled item: where it is and which of the two checks to run on it."""

    split: str
    shard: str
    key: str
    id: str
    modality: str
    decode: bool
    retokenize: bool

    @property
    def label(self) -> str:
        return f"{self.split}/{self.shard}"

    @property
    def checks(self) -> tuple[str, ...]:
        """The checks asked of this item, in report order."""
        return tuple(c for c, on in (("decode", self.decode), ("retokenize", self.retokenize)) if on)

    def fail(self, log: FindingLog, check: str, detail: str) -> None:
        log.add(check, detail, shard=self.label, key=self.key, id=self.id)


def unverifiable(picks: Iterable[Pick], detail: str, log: FindingLog) -> FindingLog:
    """Record every check asked of `picks` as failed for one reason they share (no tokenizer, an
    unreadable shard, a crashed task): each item is reported, none silently dropped."""
    for p in picks:
        for check in p.checks:
            p.fail(log, check, detail)
    return log


@dataclass
class CodecSummary:
    findings: FindingLog
    counts: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    seconds: float = 0.0
    # With allow_mismatch: each loaded codec that differs from the dataset's token space (require_same records)
    overrides: list[dict[str, Any]] = field(default_factory=list)


MISMATCH_FIX = ("The codecs of job.json's config load differently here than when the dataset was tokenized: give "
                "this machine the same weights, or pass --allow-token-space-mismatch to run the decode/retokenize "
                "checks with these codecs anyway (recorded in report.json)")


def _bump(counts: dict, name: str, n: int | float = 1) -> None:
    counts[name] = counts.get(name, 0) + n


def run_codec_checks(
    picks: list[Pick],
    shard_paths: dict[str, tuple[str, dict]],  # label -> (tar_path, index)
    *,
    space: Any,
    config: dict | None,
    device: str = "cpu",
    exact: bool = True,
    max_examples: int = 20,
    max_member_bytes: int = 256 * 1024 * 1024,
    tokenizer: Any = None,
    allow_mismatch: bool = False,
) -> CodecSummary:
    """Decode and/or retokenize `picks`. exact=True: a retokenize difference is a failure; else it is
    only measured (token agreement rate), since another device class may legitimately differ.
    `config` is job.json's UTIConfig dict (None: the `default` preset). Codecs that load differently from
    the dataset's token space make every item unverifiable, unless `allow_mismatch` (--allow-token-space-
    mismatch): then the checks run with them and the differences are returned in `overrides`."""
    from sharding.reader import read_shard
    from uti.config import UTIConfig, load_config
    from uti.errors import UTIError
    from uti.strict import from_dict
    from uti.token_space import TokenSpace
    from uti.tokenizer import UnifiedTokenizer

    t0 = time.perf_counter()
    log = FindingLog(max_examples)
    counts: dict[str, Any] = {}
    space = space if isinstance(space, TokenSpace) else TokenSpace.from_dict(space)
    needed = sorted({p.modality for p in picks if p.modality in ("audio", "image")})
    try:
        cfg = from_dict(UTIConfig, config, where="job.json config") if config is not None else load_config("default")
        # A caller that already holds the codecs (a notebook, a test) may pass them in; it must match.
        tok = tokenizer if tokenizer is not None else UnifiedTokenizer(
            cfg.replace(device=device), modalities=needed, token_space=space, allow_mismatch=allow_mismatch,
            mismatch_fix=MISMATCH_FIX)
        if tok.space.id != space.id:
            raise UTIError(f"the given tokenizer has token space {tok.space.short_id}, the dataset {space.short_id}")
    except (UTIError, ValueError, OSError, RuntimeError) as exc:
        # Every sampled item is unverifiable for the same reason: report it on each check once per item.
        unverifiable(picks, f"cannot rebuild the tokenizer from job.json's config: {exc}", log)
        return CodecSummary(findings=log, counts={"tokenizer_error": 1}, seconds=time.perf_counter() - t0)
    load = time.perf_counter() - t0

    by_shard: dict[str, dict[str, Pick]] = {}
    for p in picks:
        by_shard.setdefault(p.label, {})[p.key] = p
    for label, wanted in by_shard.items():
        tar_path, index = shard_paths[label]
        try:
            for s in read_shard(tar_path, expected_token_space=space.id, index=index, max_member_bytes=max_member_bytes):
                p = wanted.pop(s.key, None)
                if p is not None:
                    _one(tok, cfg, p, s, log, counts, exact)
                if not wanted:
                    break  # the rest of the shard was scanned already; no need to read it again
        except UTIError as exc:
            unverifiable(wanted.values(), f"cannot read the sample: {exc}", log)
            continue
        unverifiable(wanted.values(), "sample not found in its shard on the second read (shard changed during verify?)",
                     log)
    return CodecSummary(findings=log, counts=counts, load_seconds=load, seconds=time.perf_counter() - t0,
                        overrides=list(getattr(tok, "mismatches", [])))


def _one(tok, cfg, p: Pick, s, log: FindingLog, counts: dict, exact: bool) -> None:
    what = f"{p.label} {p.key} ({p.id})"
    if p.decode:
        _bump(counts, "decode.items")
        _guarded(p, log, "decode", "decode", lambda: _decode_counted(tok, s, what, p.modality, counts))
        _text_roundtrip(tok, s, counts)
    if p.retokenize:
        _bump(counts, "retokenize.items")
        _guarded(p, log, "retokenize", "re-encode",
                 lambda: _retokenize(tok, cfg, p, s, counts, lambda check, detail: p.fail(log, check, detail), exact))


def _guarded(p: Pick, log: FindingLog, check: str, action: str, run: Callable[[], None]) -> None:
    """Run one check on one item: a refusal is a finding with its message, a crash one that names it."""
    from uti.errors import UTIError

    try:
        run()
    except UTIError as exc:
        p.fail(log, check, str(exc))
    except Exception as exc:  # noqa: BLE001 - a codec crash on stored tokens is exactly what we look for
        p.fail(log, check, f"{action} crashed: {type(exc).__name__}: {exc}")


def _decode_counted(tok, s, what: str, modality: str, counts: dict) -> None:
    from uti.errors import DecodeUnavailable

    try:
        _decode(tok, s, what)
    except DecodeUnavailable:
        # No decoder configured (SEED without its unCLIP pipeline): nothing is wrong with the tokens;
        # the check reports these items as not decoded (skipped when none could be), never as failures.
        _bump(counts, f"decode.{modality}.unavailable")
        return
    _bump(counts, f"decode.{modality}.ok")


def _decode(tok, s, what: str) -> None:
    from uti.errors import DecodeRefused

    meta = s.meta
    if meta["modality"] == "audio":
        wav = tok.decode_audio(s.tokens, meta, what=what)
        if wav.dim() != 2 or wav.shape[0] != meta.get("channels"):
            raise DecodeRefused(f"{what}: decoded shape {tuple(wav.shape)}, meta says {meta.get('channels')} channels")
        if tok.audio.sample_rate != meta.get("sample_rate"):
            raise DecodeRefused(f"{what}: decoder rate {tok.audio.sample_rate} Hz, meta says {meta.get('sample_rate')}")
        if not bool(np.isfinite(wav.numpy()).all()):
            raise DecodeRefused(f"{what}: decoded audio holds NaN/inf")
    elif meta["modality"] == "image":
        img = tok.decode_image(s.tokens, meta, what=what)
        if img.dtype != np.uint8 or img.ndim != 3 or list(img.shape[:2]) != list(meta["proc_size"]) or img.shape[2] != 3:
            raise DecodeRefused(f"{what}: decoded image {img.dtype} {img.shape}, meta proc_size {meta['proc_size']}")
    for i, ids in enumerate(split_captions(s.text, meta.get("caption_token_lengths") or [], what=what)):
        tok.decode_text(ids, what=f"{what} caption {i}")


def _text_roundtrip(tok, s, counts: dict) -> None:
    # Informational: a Hugging Face tokenizer may normalize text, so decode(encode(c)) != c is not an error.
    try:
        captions = split_captions(s.text, s.meta.get("caption_token_lengths") or [], what="")
    except Exception:  # noqa: BLE001 - already reported by _decode
        return
    for ids, caption in zip(captions, s.meta.get("captions") or []):
        try:
            same = tok.decode_text(ids) == caption
        except Exception:  # noqa: BLE001 - already reported by _decode
            continue
        _bump(counts, "decode.captions")
        if not same:
            _bump(counts, "decode.caption_roundtrip_differs")


def _retokenize(tok, cfg, p: Pick, s, counts: dict, fail, exact: bool) -> None:
    """Make the sample again from its source, as the tokenize job does (`build_sample`), and compare."""
    from sharding.format import build_sample
    from sharding.media import source_label, source_row

    meta = s.meta
    # Text first: the text tokenizer is deterministic on every device, so this is always exact.
    text, lengths = tok.encode_captions(meta.get("captions") or [])
    if not np.array_equal(text, s.text):
        fail("retokenize", f"captions re-encode to {text.size} IDs that differ from text.npy ({s.text.size} IDs)")
        return
    if meta["modality"] == "text":
        _bump(counts, "retokenize.text.exact")
        return
    # The row as the tokenize job saw it (file, or bytes inside a Hugging Face dataset).
    row = source_row(meta)
    media = _load_source(row, meta, cfg, counts, fail)
    if media is None:
        return
    if media.source_sha256 != meta.get("source_sha256"):
        fail("retokenize", f"source {source_label(row)} now hashes to {media.source_sha256[:16]}, the sample was made from "
                           f"{str(meta.get('source_sha256'))[:16]} (the source changed after tokenizing)")
        return
    encode = tok.encode_audios if meta["modality"] == "audio" else tok.encode_images
    ids, codec_meta = encode([media.data])[0]
    again = build_sample(row, split=meta["split"], token_space_id=tok.space.id, tokens=ids, text=text,
                         caption_token_lengths=lengths, codec_meta=codec_meta, source_sha256=media.source_sha256,
                         info=media.info)
    if meta["modality"] == "audio":
        for k in ("n_frames", "n_samples"):
            if again.meta.codec[k] != meta.get(k):
                fail("retokenize", f"re-encoding gives {k}={again.meta.codec[k]}, the sample says {meta.get(k)}")
                return
    _compare_tokens(tok, p, again.tokens, s.tokens, counts, fail, exact)


def _load_source(row, meta: dict, cfg, counts: dict, fail):
    """The source media, loaded by the function the job's read tasks use, at the sizes this sample was
    encoded at; None when it cannot be (a missing file is counted, not failed)."""
    from sharding.media import AudioSpec, load_media
    from uti.errors import MediaError

    try:
        audio = meta["modality"] == "audio"
        return load_media(row, limits=cfg.limits,
                          spec=AudioSpec(sample_rate=meta["sample_rate"], channels=meta["channels"]) if audio else None,
                          proc_size=None if audio else int(meta["proc_size"][0]))
    except MediaError as exc:
        if exc.reason == "missing_file":
            # Sources often stay behind when a dataset moves to the cluster: unverifiable, not wrong.
            _bump(counts, "retokenize.source_missing")
            return None
        fail("retokenize", f"source no longer loads: {exc}")
        return None


def _compare_tokens(tok, p: Pick, ids: np.ndarray, stored: np.ndarray, counts: dict, fail, exact: bool) -> None:
    """Token agreement of a re-encoding with the stored tokens; a difference fails only when exact."""
    n = max(ids.size, stored.size)
    m = min(ids.size, stored.size)
    agree = int((ids[:m] == stored[:m]).sum())
    _bump(counts, "retokenize.tokens_compared", n)
    _bump(counts, "retokenize.tokens_agree", agree)
    _bump(counts, f"retokenize.{p.modality}.compared")
    if agree == n:
        _bump(counts, f"retokenize.{p.modality}.exact")
        return
    _bump(counts, "retokenize.differs")
    first = int(np.argmax(ids[:m] != stored[:m])) if agree < m else m
    detail = (f"re-encoded tokens differ from the stored ones: {n - agree} of {n} differ, first at position {first}"
              + (f" (level {tok.space.layout('audio').level_of_position(first)})"
                 if p.modality == "audio" and tok.audio else ""))
    if exact:
        fail("retokenize", detail)
