"""The shard plan: which canonical IDs go into which shard, fixed before any work starts.

Rows are sorted by canonical ID and grouped per split (splits in sorted order) into consecutive
shards `shard-{index:06d}` (index restarts at 0 per split). The plan is canonical JSON, so the
same rows and target always give byte-identical `plan.json`, whatever order the rows came in.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from uti.errors import UTIError
from uti.token_space import canonical_json

FORMAT = "uti.plan"
VERSION = 1
DEFAULT_TARGET_SAMPLES = 1000
_SHARD_NAME = re.compile(r"^shard-\d{6,}$")


class PlanError(UTIError, ValueError):
    """A plan cannot be made from these inputs, or a plan.json is malformed."""


class PlanRow(Protocol):
    """What planning needs from a row (ManifestRow satisfies it)."""

    id: str
    split: str
    modality: str
    duration: float | None


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


@dataclass(kw_only=True, frozen=True)
class PlanShard:
    name: str
    ids: tuple[str, ...]
    seconds: float

    @property
    def num_samples(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ids": list(self.ids), "num_samples": self.num_samples, "seconds": self.seconds}


@dataclass(kw_only=True, frozen=True)
class Plan:
    manifest_sha256: str
    target: dict[str, Any]  # {"samples": N} or {"seconds": S}
    splits: dict[str, tuple[PlanShard, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "manifest_sha256": self.manifest_sha256,
            "target": dict(self.target),
            "splits": {s: [sh.to_dict() for sh in shards] for s, shards in self.splits.items()},
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, compact, UTF-8): the exact bytes of plan.json."""
        return canonical_json(self.to_dict())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def shards(self) -> Iterable[tuple[str, PlanShard]]:
        """(split, shard) in plan order."""
        for split in sorted(self.splits):
            for shard in self.splits[split]:
                yield split, shard

    def shard(self, split: str, name: str) -> PlanShard:
        for sh in self.splits.get(split, ()):
            if sh.name == name:
                return sh
        raise PlanError(f"plan has no shard {split}/{name}")

    @property
    def num_shards(self) -> int:
        return sum(len(v) for v in self.splits.values())

    @property
    def num_samples(self) -> int:
        return sum(sh.num_samples for _, sh in self.shards())


def _target(target_samples: int | None, target_seconds: float | None) -> dict[str, Any]:
    if target_samples is not None and target_seconds is not None:
        raise PlanError("give one shard target: samples or seconds, not both")
    if target_seconds is not None:
        if isinstance(target_seconds, bool) or not math.isfinite(target_seconds) or target_seconds <= 0:
            raise PlanError(f"target seconds must be a positive number, got {target_seconds!r}")
        return {"seconds": float(target_seconds)}
    samples = DEFAULT_TARGET_SAMPLES if target_samples is None else target_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
        raise PlanError(f"target samples must be a positive integer, got {samples!r}")
    return {"samples": samples}


def make_plan(
    rows: Iterable[PlanRow],
    *,
    manifest_sha256: str,
    target_samples: int | None = None,
    target_seconds: float | None = None,
) -> Plan:
    """Group rows into shards per split; exactly one target (default 1000 samples).

    With a seconds target a shard closes once it reaches the target, and an item that would push a
    non-empty shard over it starts a new one (so an item longer than the target sits alone). Only
    audio with a known duration counts toward seconds; every row counts toward samples.
    """
    target = _target(target_samples, target_seconds)
    by_split: dict[str, list[tuple[str, float]]] = {}
    seen: set[str] = set()
    dups: list[str] = []
    for row in rows:
        if row.id in seen:
            dups.append(row.id)
            continue
        seen.add(row.id)
        secs = float(row.duration) if row.modality == "audio" and row.duration is not None else 0.0
        by_split.setdefault(row.split, []).append((row.id, secs))
    if dups:
        shown = ", ".join(map(repr, sorted(dups)[:10]))
        raise PlanError(f"{len(dups)} duplicate canonical ID(s) in the rows: {shown}; each ID must appear once")

    splits: dict[str, tuple[PlanShard, ...]] = {}
    for split in sorted(by_split):
        items = sorted(by_split[split])
        splits[split] = tuple(_group(items, target))
    return Plan(manifest_sha256=manifest_sha256, target=target, splits=splits)


def _group(items: list[tuple[str, float]], target: Mapping[str, Any]) -> list[PlanShard]:
    shards: list[PlanShard] = []
    ids: list[str] = []
    secs = 0.0

    def close() -> None:
        nonlocal ids, secs
        # Rounded so float noise in a long sum never changes plan bytes across platforms.
        shards.append(PlanShard(name=shard_name(len(shards)), ids=tuple(ids), seconds=round(secs, 6)))
        ids, secs = [], 0.0

    for id_, d in items:
        if "seconds" in target and ids and secs + d > target["seconds"]:
            close()
        ids.append(id_)
        secs += d
        full = len(ids) >= target["samples"] if "samples" in target else secs >= target["seconds"]
        if full:
            close()
    if ids:
        close()
    return shards


def plan_from_dict(data: Any, *, where: str = "plan") -> Plan:
    """Validate and build a Plan from parsed JSON; errors name what is wrong and where."""
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected a JSON object")
    if data.get("format") != FORMAT:
        raise PlanError(f"{where}: format is {data.get('format')!r}, expected {FORMAT!r}; is this a plan.json?")
    if data.get("version") != VERSION:
        raise PlanError(f"{where}: plan version {data.get('version')!r} is not supported (this reader reads {VERSION})")
    extra = sorted(set(data) - {"format", "version", "manifest_sha256", "target", "splits"})
    if extra:
        raise PlanError(f"{where}: unknown key(s) {', '.join(extra)}")
    sha = data.get("manifest_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise PlanError(f"{where}: manifest_sha256 must be 64 lowercase hex digits")
    tgt = data.get("target")
    if not isinstance(tgt, dict) or len(tgt) != 1 or not set(tgt) <= {"samples", "seconds"}:
        raise PlanError(f"{where}: target must be {{'samples': N}} or {{'seconds': S}}, got {tgt!r}")
    target = _target(tgt.get("samples"), tgt.get("seconds"))
    raw_splits = data.get("splits")
    if not isinstance(raw_splits, dict):
        raise PlanError(f"{where}: splits must be an object")
    seen: dict[str, str] = {}
    splits: dict[str, tuple[PlanShard, ...]] = {}
    for split, shards in raw_splits.items():
        if not isinstance(shards, list):
            raise PlanError(f"{where}: splits.{split} must be a list of shards")
        out = []
        for i, sh in enumerate(shards):
            loc = f"{where}: splits.{split}[{i}]"
            if not isinstance(sh, dict) or set(sh) != {"name", "ids", "num_samples", "seconds"}:
                raise PlanError(f"{loc}: a shard has exactly name, ids, num_samples, seconds")
            if sh["name"] != shard_name(i):
                raise PlanError(f"{loc}: name {sh['name']!r} should be {shard_name(i)!r}")
            ids = sh["ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
                raise PlanError(f"{loc}: ids must be a non-empty list of strings")
            if sh["num_samples"] != len(ids):
                raise PlanError(f"{loc}: num_samples {sh['num_samples']!r} != {len(ids)} ids")
            if isinstance(sh["seconds"], bool) or not isinstance(sh["seconds"], (int, float)) or sh["seconds"] < 0:
                raise PlanError(f"{loc}: seconds must be a number >= 0")
            for x in ids:
                if x in seen:
                    raise PlanError(f"{loc}: ID {x!r} is also in {seen[x]}")
                seen[x] = f"{split}/{sh['name']}"
            out.append(PlanShard(name=sh["name"], ids=tuple(ids), seconds=float(sh["seconds"])))
        splits[split] = tuple(out)
    return Plan(manifest_sha256=sha, target=target, splits=splits)


def plan_from_bytes(data: bytes, *, where: str = "plan") -> Plan:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    return plan_from_dict(parsed, where=where)


def plan_sha256(plan: Plan) -> str:
    """SHA-256 of a plan's canonical bytes (equal to the SHA-256 of its plan.json file; read and written
    only by sharding.outdir, the owner of the OUT folder)."""
    return plan.sha256
