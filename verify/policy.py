"""Which encode policy each sampled item's tokens were made with, and how retokenize can compare them.

A version 2 shard header records, per media modality, the numerics that made its tokens
(uti.codecs.batching.EncodePolicy: device type, dtype, TF32, items per forward pass, padding rule,
where media were prepared). Retokenize re-encodes each item with the policy ITS shard records, and
the comparison is one of three modes:

* exact: the recorded numerics are the ones verify's codec runs with (same device type, dtype, TF32,
  preparation). Any difference is a FAIL naming the shard, sample, position and level.
* agreement: the numerics differ (GPU shards checked on CPU nodes, media prepared on the device) or
  the header records no policy for the modality. Codes near a decision boundary may flip, so the share
  of equal codes per level is measured and the check passes at or above
  `VerifyConfig.cross_device_agreement`; never reported as exact.
* unverifiable: verify cannot reproduce the policy (an encode policy version or field this uti does not
  read, a padding rule its codec does not have). The item is counted with the reason, never failed.

A version 1 header records no policy: job.json's device decides (exact when it is the device class
verify runs on, else agreement), at the config's encode_batch or 1 (version 1 shards were made one
item per pass).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from sharding.outdir import JOB_NAME

EXACT, AGREEMENT, UNVERIFIABLE = "exact", "agreement", "unverifiable"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class RecordedPolicy:
    """What one shard's header records of the numerics that made one modality's tokens: canonical JSON
    of `encode_policy[modality]` (hashable, so picks and groups can key on it), or None when a version 2
    header has no entry for the modality."""

    data: str | None

    @classmethod
    def of(cls, header_version: int | None, encode_policy: Mapping[str, Any] | None, modality: str) -> "RecordedPolicy | None":
        """None for a version 1 header (the policy was not recorded: job.json's device decides)."""
        if not header_version or header_version < 2 or not isinstance(encode_policy, Mapping):
            return None
        entry = encode_policy.get(modality)
        return cls(_canonical(entry) if entry is not None else None)

    def raw(self) -> Any:
        return json.loads(self.data) if self.data is not None else None


@contextlib.contextmanager
def encoding_with(codec: Any, encode_batch: int) -> Iterator[None]:
    """The codec set to `encode_batch` items per pass for the block, then back to what it was (a caller's
    tokenizer is left as it was handed in)."""
    before = codec.encode_batch
    codec.set_encode_batch(encode_batch)
    try:
        yield
    finally:
        codec.set_encode_batch(before)


@dataclass(frozen=True, kw_only=True)
class RetokenizeMode:
    """How the items of one recorded policy are re-encoded and compared."""

    mode: str  # EXACT, AGREEMENT or UNVERIFIABLE
    modality: str
    encode_batch: int  # items per forward pass of the re-encode
    recorded: dict[str, Any] | None  # the policy the header records (None: not recorded)
    here: dict[str, Any] | None  # the policy verify's codec encodes with
    source: str  # "header", "job.json" (version 1 header) or "unrecorded" (version 2 header, no entry)
    tokenized_on: str  # the device type that made the tokens ("unknown" when nobody recorded it)
    differences: tuple[str, ...] = ()
    reason: str = ""  # why not exact, or why unverifiable

    @property
    def re_encoded_on(self) -> str:
        return str((self.here or {}).get("device_type", "?"))

    def describe_made(self) -> str:
        """'cuda (encode_batch 16)', as the notes and failures say it."""
        if self.recorded is not None:
            return f"{self.tokenized_on} (encode_batch {self.recorded.get('encode_batch')})"
        return f"{self.tokenized_on} ({'job.json actors.device; ' if self.source == JOB_NAME else ''}no encode policy recorded)"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "modality": self.modality, "encode_batch": self.encode_batch,
                "recorded": self.recorded, "here": self.here, "source": self.source,
                "tokenized_on": self.tokenized_on, "re_encoded_on": self.re_encoded_on,
                "differences": list(self.differences), "reason": self.reason}


def decide(recorded: RecordedPolicy | None, codec: Any, *, legacy_exact: bool, job_device: str | None,
           legacy_encode_batch: int, where: str) -> RetokenizeMode:
    """The mode for items whose shard records `recorded` (None: a version 1 header), re-encoded by `codec`
    on verify's device. Called once per distinct policy of a task."""
    from uti.codecs.batching import PREPARE_READER, EncodePolicy
    from uti.errors import ConfigError

    modality = codec.modality
    if recorded is None:
        with encoding_with(codec, legacy_encode_batch):
            here = codec.encode_policy(prepare_on=PREPARE_READER)
        made = (job_device or "unknown").split(":")[0]
        if legacy_exact:
            return RetokenizeMode(mode=EXACT, modality=modality, encode_batch=legacy_encode_batch, recorded=None,
                                  here=here.to_dict(), source=JOB_NAME, tokenized_on=made)
        return RetokenizeMode(mode=AGREEMENT, modality=modality, encode_batch=legacy_encode_batch, recorded=None,
                              here=here.to_dict(), source=JOB_NAME, tokenized_on=made,
                              reason=f"the shard header (version 1) records no encode policy and job.json's device is "
                                     f"{job_device or 'not recorded'}, verify's {here.device_type}")
    raw = recorded.raw()
    if raw is None:
        here = codec.encode_policy(prepare_on=PREPARE_READER)
        return RetokenizeMode(mode=AGREEMENT, modality=modality, encode_batch=codec.encode_batch, recorded=None,
                              here=here.to_dict(), source="unrecorded", tokenized_on="unknown",
                              reason=f"the shard header records no encode policy for {modality}")
    try:
        policy = EncodePolicy.from_dict(raw, where=f"{where} header encode_policy.{modality}")
    except (ConfigError, TypeError) as exc:
        return RetokenizeMode(mode=UNVERIFIABLE, modality=modality, encode_batch=codec.encode_batch, recorded=raw,
                              here=None, source="header", tokenized_on=str(raw.get("device_type", "unknown")),
                              reason=f"this uti cannot reproduce the recorded encode policy: {exc}")
    with encoding_with(codec, policy.encode_batch):
        # Verify prepares media where the shard says they were (verify.codec_checks.reprepare_media).
        here = codec.encode_policy(prepare_on=policy.prepare_on)
    base = dict(mode=AGREEMENT, modality=modality, encode_batch=policy.encode_batch, recorded=policy.to_dict(),
                here=here.to_dict(), source="header", tokenized_on=policy.device_type)
    if here.padding != policy.padding:
        return RetokenizeMode(**{**base, "mode": UNVERIFIABLE}, reason=(
            f"the shard records padding rule {policy.padding!r}; this uti's {getattr(codec, 'kind', modality)} codec "
            f"pads {here.padding!r} at encode_batch {policy.encode_batch}, so its tokens cannot be reproduced here"))
    differences = tuple(policy.differences(here))
    if not differences:
        return RetokenizeMode(**{**base, "mode": EXACT})
    why = "; ".join(differences)
    return RetokenizeMode(**base, differences=differences, reason=f"other numerics than the shard's: {why}")


# ---- what the comparisons of one policy add up to -------------------------------------------------------
@dataclass
class GroupTally:
    """The re-encoded items of one recorded policy (one modality): per level codes compared and equal, and
    the item with the lowest agreement (what a failure below the threshold names). Tasks' tallies merge."""

    mode: RetokenizeMode
    levels: list[str]  # level names in level order ("audio.l0", ...; "image")
    compared: list[int] = field(default_factory=list)
    agree: list[int] = field(default_factory=list)
    items: int = 0  # items asked of this policy
    compared_items: int = 0
    exact_items: int = 0
    unverifiable_items: int = 0
    worst: tuple[float, str, str, str] | None = None  # (agreement, shard, key, id)

    def __post_init__(self) -> None:
        self.compared = self.compared or [0] * len(self.levels)
        self.agree = self.agree or [0] * len(self.levels)

    def add(self, level_of: np.ndarray, ids: np.ndarray, stored: np.ndarray, *, shard: str, key: str, id: str) -> float:
        """One item's comparison (level_of: the level of every position of the longer sequence). Positions
        only one side has count as compared, not equal. Returns the item's agreement."""
        n, m = max(ids.size, stored.size), min(ids.size, stored.size)
        equal = np.zeros(n, dtype=bool)
        equal[:m] = ids[:m] == stored[:m]
        self.compared = (np.asarray(self.compared) + np.bincount(level_of[:n], minlength=len(self.levels))).tolist()
        self.agree = (np.asarray(self.agree) + np.bincount(level_of[:n][equal], minlength=len(self.levels))).tolist()
        self.compared_items += 1
        rate = float(equal.mean()) if n else 1.0
        if rate == 1.0:
            self.exact_items += 1
        if self.worst is None or (rate, shard, key) < self.worst[:3]:
            self.worst = (rate, shard, key, id)
        return rate

    def merge(self, other: "GroupTally") -> None:
        self.compared = [a + b for a, b in zip(self.compared, other.compared)]
        self.agree = [a + b for a, b in zip(self.agree, other.agree)]
        self.items += other.items
        self.compared_items += other.compared_items
        self.exact_items += other.exact_items
        self.unverifiable_items += other.unverifiable_items
        if other.worst is not None and (self.worst is None or other.worst[:3] < self.worst[:3]):
            self.worst = other.worst

    @property
    def agreement(self) -> float | None:
        total = sum(self.compared)
        return sum(self.agree) / total if total else None

    def per_level(self) -> dict[str, float]:
        return {name: a / c for name, a, c in zip(self.levels, self.agree, self.compared) if c}

    def note(self, threshold: float) -> str:
        """What an agreement-mode group says: where it was made and re-encoded, the agreement per level, and
        that it is not exact, so it can never be read as an exact pass."""
        m = self.mode
        if self.agreement is None:
            return (f"{m.modality}: tokenized on {m.describe_made()}, re-encoded on {m.re_encoded_on}: nothing "
                    f"compared; not exact")
        levels = ", ".join(f"level {k}: {rate:.2f}" if m.modality == "audio" else f"{name}: {rate:.2f}"
                           for k, (name, rate) in enumerate(self.per_level().items()))
        verdict = "passes" if self.agreement >= threshold else "below"
        return (f"{m.modality}: tokenized on {m.describe_made()}, re-encoded on {m.re_encoded_on}: agreement "
                f"{self.agreement:.2f} ({levels}); not exact ({m.reason}); {verdict} the cross-device agreement "
                f"threshold {threshold:.2f}")

    def to_dict(self, threshold: float | None = None) -> dict[str, Any]:
        out = {**self.mode.to_dict(), "items": self.items, "compared_items": self.compared_items,
               "exact_items": self.exact_items, "unverifiable_items": self.unverifiable_items,
               "codes_compared": sum(self.compared), "codes_agree": sum(self.agree),
               "agreement": self.agreement, "per_level": self.per_level()}
        if self.worst is not None:
            out["lowest"] = {"agreement": self.worst[0], "shard": self.worst[1], "key": self.worst[2], "id": self.worst[3]}
        if threshold is not None and self.mode.mode == AGREEMENT:
            out["threshold"] = threshold
            out["passed"] = self.agreement is None or self.agreement >= threshold
        return out


def group_key(modality: str, recorded: RecordedPolicy | None) -> str:
    """One group per modality and recorded policy (the mode follows from them on verify's device)."""
    if recorded is None:
        return f"{modality} version1"
    return f"{modality} {recorded.data if recorded.data is not None else 'unrecorded'}"


def level_names(space: Any, modality: str) -> list[str]:
    return [r.name for r in space.layout(modality).level_ranges]


def levels_of(space: Any, modality: str, n: int) -> np.ndarray:
    """The level of positions 0..n-1 of a `modality` media sequence (the token space's layout)."""
    pattern = np.asarray(space.layout(modality).pattern, dtype=np.int64)
    return pattern[np.arange(n) % pattern.size]


def policy_summary(policy: Mapping[str, Any] | None) -> str:
    """'cpu float32, TF32 off, encode_batch 1, prepared on reader, torch 2.5.1', for report.html."""
    if not isinstance(policy, Mapping):
        return "not recorded"
    return (f"{policy.get('device_type')} {policy.get('dtype')}, TF32 {'on' if policy.get('tf32') else 'off'}, "
            f"encode_batch {policy.get('encode_batch')}, prepared on {policy.get('prepare_on')}, "
            f"torch {policy.get('torch') or '?'}")
