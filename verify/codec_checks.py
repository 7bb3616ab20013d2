"""Checks 7 and 8 on a seeded sample: decode the tokens, and re-encode the source and compare.

One call loads the codecs once (seconds) and then handles many sampled items, so the run pays the
load per task, not per item. Only the modalities present in the batch are loaded.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from uti.captions import split_captions
from verify.findings import Check, FindingLog
from verify.policy import (EXACT, UNVERIFIABLE, GroupTally, RecordedPolicy, RetokenizeMode, decide, encoding_with,
                           group_key, level_names, levels_of)


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
    # What the item's shard header records of the numerics that made its modality's tokens; None: a
    # version 1 header (or a caller that does not say), where job.json's device decides (`exact`).
    policy: RecordedPolicy | None = None

    @property
    def label(self) -> str:
        return f"{self.split}/{self.shard}"

    @property
    def checks(self) -> tuple[str, ...]:
        """The checks asked of this item, in report order."""
        return tuple(c for c, on in ((Check.DECODE, self.decode), (Check.RETOKENIZE, self.retokenize)) if on)

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
    # Retokenize per modality and recorded encode policy (verify.policy.group_key -> tally)
    retokenize: dict[str, GroupTally] = field(default_factory=dict)


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
    job_device: str | None = None,
) -> CodecSummary:
    """Decode and/or retokenize `picks`. Retokenize re-encodes each item with the encode policy its
    shard header records (`Pick.policy`; verify.policy says when that comparison is exact, measured as
    agreement, or not possible). For items of version 1 headers (no policy) `exact` decides, from
    job.json's device (`job_device`): True, a difference is a failure; else agreement is measured.
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

    retok = _Retokenizer(tok, cfg, log, counts, legacy_exact=exact, job_device=job_device)
    by_shard: dict[str, dict[str, Pick]] = {}
    for p in picks:
        by_shard.setdefault(p.label, {})[p.key] = p
    for label, wanted in by_shard.items():
        tar_path, index = shard_paths[label]
        try:
            for s in read_shard(tar_path, expected_token_space=space.id, index=index, max_member_bytes=max_member_bytes):
                p = wanted.pop(s.key, None)
                if p is not None:
                    _one(tok, p, s, log, counts, retok)
                if not wanted:
                    break  # the rest of the shard was scanned already; no need to read it again
        except UTIError as exc:
            unverifiable(wanted.values(), f"cannot read the sample: {exc}", log)
            continue
        unverifiable(wanted.values(), "sample not found in its shard on the second read (shard changed during verify?)",
                     log)
    tallies = retok.finish()
    return CodecSummary(findings=log, counts=counts, load_seconds=load, seconds=time.perf_counter() - t0,
                        overrides=list(getattr(tok, "mismatches", [])), retokenize=tallies)


def _one(tok, p: Pick, s, log: FindingLog, counts: dict, retok: "_Retokenizer") -> None:
    what = f"{p.label} {p.key} ({p.id})"
    if p.decode:
        _bump(counts, "decode.items")
        _guarded(p, log, Check.DECODE, "decode", lambda: _decode_counted(tok, s, what, p.modality, counts))
        _text_roundtrip(tok, s, counts)
    if p.retokenize:
        _bump(counts, "retokenize.items")
        _guarded(p, log, Check.RETOKENIZE, "re-encode", lambda: retok.add(p, s))


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


# ---- retokenize: re-encode with the policy each item's shard records ------------------------------------
@dataclass
class _Pending:
    """An item whose source loaded and still hashes as it did, waiting for its group's next pass."""

    pick: Pick
    sample: Any  # the stored sample (sharding.reader.Sample)
    row: Any
    media: Any  # sharding.media.LoadedMedia
    text: np.ndarray
    lengths: list[int]


@dataclass
class _Group:
    """The items of one recorded policy in this task: how they are compared, and those not yet encoded."""

    mode: RetokenizeMode
    tally: GroupTally
    pending: list[_Pending] = field(default_factory=list)


class _Retokenizer:
    """Re-encodes the sampled items group by group: one group per modality and recorded encode policy,
    decided once (verify.policy.decide), encoded up to the policy's encode_batch items per call with the
    codec set to it. With a fixed pass shape the items sharing a call never change an item's codes
    (uti.codecs.batching), and batching keeps a GPU-made policy of 16 from costing 16 passes per item."""

    def __init__(self, tok, cfg, log: FindingLog, counts: dict, *, legacy_exact: bool, job_device: str | None):
        self.tok, self.cfg, self.log, self.counts = tok, cfg, log, counts
        self.legacy_exact, self.job_device = legacy_exact, job_device
        self.groups: dict[str, _Group] = {}

    def add(self, p: Pick, s) -> None:
        """Check the captions, load the source and queue the item (or count it unverifiable)."""
        from sharding.media import source_label, source_row

        tok, meta, counts = self.tok, s.meta, self.counts

        def fail(detail: str) -> None:
            p.fail(self.log, Check.RETOKENIZE, detail)

        # Text first: the text tokenizer is deterministic on every device, so this is always exact.
        text, lengths = tok.encode_captions(meta.get("captions") or [])
        if not np.array_equal(text, s.text):
            fail(f"captions re-encode to {text.size} IDs that differ from text.npy ({s.text.size} IDs)")
            return
        if meta["modality"] == "text":
            _bump(counts, "retokenize.text.exact")
            return
        group = self._group(p)
        group.tally.items += 1
        if group.mode.mode == UNVERIFIABLE:
            group.tally.unverifiable_items += 1
            _bump(counts, "retokenize.unverifiable")
            return
        # The row as the tokenize job saw it (file, or bytes inside a Hugging Face dataset).
        row = source_row(meta)
        codec = getattr(self.tok, meta["modality"])
        media = reprepare_media(row, meta, self.cfg, counts, fail, prepare_on=(group.mode.recorded or {}).get("prepare_on"),
                                device=getattr(codec, "device", "cpu"))
        if media is None:
            return
        if media.source_sha256 != meta.get("source_sha256"):
            fail(f"source {source_label(row)} now hashes to {media.source_sha256[:16]}, the sample was made from "
                 f"{str(meta.get('source_sha256'))[:16]} (the source changed after tokenizing)")
            return
        group.pending.append(_Pending(pick=p, sample=s, row=row, media=media, text=text, lengths=lengths))
        if len(group.pending) >= group.mode.encode_batch:
            self.flush(group)

    def _group(self, p: Pick) -> _Group:
        key = group_key(p.modality, p.policy)
        if key not in self.groups:
            codec = self._codec(p.modality)
            configured = getattr(getattr(self.cfg, p.modality, None), "encode_batch", None)
            mode = decide(p.policy, codec, legacy_exact=self.legacy_exact, job_device=self.job_device,
                          legacy_encode_batch=configured or 1, where=p.label)
            self.groups[key] = _Group(mode=mode, tally=GroupTally(mode=mode, levels=level_names(self.tok.space, p.modality)))
        return self.groups[key]

    def _codec(self, modality: str):
        return self.tok.audio if modality == "audio" else self.tok.image

    def finish(self) -> dict[str, GroupTally]:
        for group in self.groups.values():
            self.flush(group)
        return {k: g.tally for k, g in self.groups.items()}

    def flush(self, group: _Group) -> None:
        """Encode the group's queued items in one call with the codec at the policy's encode_batch."""
        from uti.errors import UTIError

        items, group.pending = group.pending, []
        if not items:
            return
        modality = group.mode.modality
        encode = self.tok.encode_audios if modality == "audio" else self.tok.encode_images
        try:
            with encoding_with(self._codec(modality), group.mode.encode_batch):
                encoded = encode([it.media.data for it in items])
        except UTIError as exc:
            for it in items:
                it.pick.fail(self.log, Check.RETOKENIZE, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a codec crash on a stored item's source is a finding
            for it in items:
                it.pick.fail(self.log, Check.RETOKENIZE, f"re-encode crashed: {type(exc).__name__}: {exc}")
            return
        for it, (ids, codec_meta) in zip(items, encoded):
            _guarded(it.pick, self.log, Check.RETOKENIZE,
                     "re-encode", lambda: self._compare(group, it, ids, codec_meta))

    def _compare(self, group: _Group, it: _Pending, ids: np.ndarray, codec_meta: dict) -> None:
        """Make the sample again as the tokenize job does (`build_sample`) and compare its tokens."""
        from sharding.format import build_sample

        p, meta = it.pick, it.sample.meta
        again = build_sample(it.row, split=meta["split"], token_space_id=self.tok.space.id, tokens=ids, text=it.text,
                             caption_token_lengths=it.lengths, codec_meta=codec_meta,
                             source_sha256=it.media.source_sha256, info=it.media.info)
        if meta["modality"] == "audio":
            for k in ("n_frames", "n_samples"):
                if again.meta.codec[k] != meta.get(k):
                    p.fail(self.log, Check.RETOKENIZE,
                           f"re-encoding gives {k}={again.meta.codec[k]}, the sample says {meta.get(k)}")
                    return
        _compare_tokens(self.tok, group, p, again.tokens, it.sample.tokens, self.counts,
                        lambda detail: p.fail(self.log, Check.RETOKENIZE, detail))


def reprepare_media(row, meta: dict, cfg, counts: dict, fail, *, prepare_on: str | None = None, device: Any = "cpu"):
    """The source media prepared again at the sizes this sample was encoded at, the way its shard's policy
    says: as the CPU read tasks do (sharding.media.load_media), or, for prepare_on "device", decoded raw and
    prepared on verify's codec device by the function the codec actor ran (sharding.media.prepare_loaded).
    None when it cannot be (a missing file is counted, not failed)."""
    from sharding.media import AudioSpec, load_media, prepare_loaded
    from uti.codecs.batching import PREPARE_DEVICE
    from uti.errors import MediaError

    try:
        audio = meta["modality"] == "audio"
        spec = AudioSpec(sample_rate=meta["sample_rate"], channels=meta["channels"]) if audio else None
        proc_size = None if audio else int(meta["proc_size"][0])
        if prepare_on == PREPARE_DEVICE:
            raw = load_media(row, limits=cfg.limits, spec=spec, proc_size=proc_size, prepare=False)
            media = prepare_loaded(row, raw, device=device, spec=spec, proc_size=proc_size)
            # Image codecs take uint8 arrays: the codec actor hands them the resized image back the same way.
            return media if audio else dataclasses.replace(media, data=media.data.cpu().numpy())
        return load_media(row, limits=cfg.limits, spec=spec, proc_size=proc_size)
    except MediaError as exc:
        if exc.reason == "missing_file":
            # Sources often stay behind when a dataset moves to the cluster: unverifiable, not wrong.
            _bump(counts, "retokenize.source_missing")
            return None
        fail(f"source no longer loads: {exc}")
        return None


def _compare_tokens(tok, group: _Group, p: Pick, ids: np.ndarray, stored: np.ndarray, counts: dict, fail) -> None:
    """Token agreement of a re-encoding with the stored tokens, per level into the group's tally. In exact
    mode a difference fails, naming the first differing position and its level; in agreement mode the
    group's agreement is gated in the reduce (an item of all-equal codes is "identical", never "exact")."""
    n, m = max(ids.size, stored.size), min(ids.size, stored.size)
    level_of = levels_of(tok.space, p.modality, n)
    group.tally.add(level_of, ids, stored, shard=p.label, key=p.key, id=p.id)
    agree = int((ids[:m] == stored[:m]).sum())
    _bump(counts, "retokenize.tokens_compared", n)
    _bump(counts, "retokenize.tokens_agree", agree)
    _bump(counts, f"retokenize.{p.modality}.compared")
    exact = group.mode.mode == EXACT
    if agree == n:
        _bump(counts, f"retokenize.{p.modality}.{'exact' if exact else 'identical'}")
        return
    _bump(counts, "retokenize.differs")
    if not exact:
        return
    first = int(np.argmax(ids[:m] != stored[:m])) if agree < m else m
    fail(f"re-encoded tokens differ from the stored ones: {n - agree} of {n} differ, first at position {first} "
         f"({_where_in_media(tok.space, p.modality, first)}); {_exact_basis(group.mode)}")


def _where_in_media(space, modality: str, position: int) -> str:
    """'level 3' for audio; the grid cell for an image (its one level)."""
    layout = space.layout(modality)
    if modality == "audio":
        return f"level {layout.level_of_position(position)}"
    if layout.grid:
        return f"image level, grid row {position // layout.grid[1]} column {position % layout.grid[1]}"
    return "image level"


def _exact_basis(mode: RetokenizeMode) -> str:
    """Why the comparison was exact, so a reader of the failure knows which numerics were expected."""
    here = mode.here or {}
    if mode.recorded is None:
        return (f"compared exactly: the shard header records no encode policy and job.json's device "
                f"{mode.tokenized_on} is verify's, re-encoded at encode_batch {mode.encode_batch}")
    torch_made, torch_here = mode.recorded.get("torch"), here.get("torch")
    release = (f"; tokenized with torch {torch_made}, re-encoded with torch {torch_here}: a kernel change between "
               "releases also shows as a difference" if torch_made and torch_here and torch_made != torch_here else "")
    return (f"compared exactly: re-encoded with the shard's recorded encode policy ({mode.tokenized_on} "
            f"{mode.recorded.get('dtype')}, TF32 {'on' if mode.recorded.get('tf32') else 'off'}, encode_batch "
            f"{mode.encode_batch}){release}")
