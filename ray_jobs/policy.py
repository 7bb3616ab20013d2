"""The encode policy across a tokenize job: the same for every actor, recorded in every shard header.

A policy (uti.codecs.batching.EncodePolicy) is handled here as the dict actors report and headers record:
the driver loads no codec and never imports torch. Every actor must report actor 0's: any actor encodes
any chunk of a shard, and the shard's header names one policy for all of them (a GPU node beside CPU
nodes, or another torch release, writes other numerics). A resumed run whose earlier shards record
another policy is told so; their tokens mean the same (the policy changes numerics, not what a token
means), and `uti verify` checks each shard against its own header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ray_jobs.outputs import JobError

log = logging.getLogger(__name__)

Policies = Mapping[str, Mapping[str, Any]]  # {modality: EncodePolicy.to_dict()}


def policy_differences(expected: Policies, found: Policies) -> list[str]:
    """Each field two {modality: policy} differ in, as "audio.encode_batch: 4 != 1" (the torch version
    too: EncodePolicy.differences leaves it out, but a header records one torch for all its chunks)."""
    out = []
    for m in sorted(set(expected) | set(found)):
        a, b = expected.get(m), found.get(m)
        if a is None or b is None:
            out.append(f"{m}: {'no policy' if a is None else 'a policy'} != {'no policy' if b is None else 'a policy'}")
            continue
        out += [f"{m}.{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def check_actor_policy(index: int, info: Mapping[str, Any], expected: Policies | None) -> None:
    """Refuse codec actor `index` (its `info` answer) unless it encodes with `expected`, actor 0's policy."""
    if expected is None:  # actor 0 reported none: nothing to hold the others to
        return
    differences = policy_differences(expected, info.get("encode_policy") or {})
    if differences:
        raise JobError(
            f"codec actor {index} (node {info.get('node')}, device {info.get('device')}) would encode with another "
            f"policy than actor 0: {'; '.join(differences)} (actor 0's first). A shard's chunks come from any actor "
            "and its header records one policy: run the job on nodes of one device type and one torch version "
            "(--gpus-per-actor 0 keeps every actor on CPU)")


def shard_policy(policy: Policies | None, modalities: Iterable[str]) -> dict[str, dict] | None:
    """What a shard's header records: the policy of each media modality its rows hold (so its bytes depend
    on its rows and the config alone, not on which codecs the job's other shards needed)."""
    if policy is None:
        return None
    return {m: dict(policy[m]) for m in sorted(set(modalities)) if m in policy}


def read_header(tar_path: str) -> dict:
    """A shard's parsed header: its first tar member only (a few KB, whatever the shard's size)."""
    from sharding.format import DEFAULT_MAX_MEMBER_BYTES, url_to_fs
    from sharding.parser import header_member, iter_members, parse_header, raise_problem
    from sharding.tario import TrackingReader

    fs, path = url_to_fs(tar_path)
    with fs.open(path, "rb") as raw:
        data = header_member(iter_members(TrackingReader(raw, hash_bytes=False), DEFAULT_MAX_MEMBER_BYTES))
    return parse_header(data, tar_path, raise_problem)


@dataclass(frozen=True, kw_only=True)
class EarlierShards:
    """The policy of the shards a resumed run found complete, from the first one's header alone (reading
    every header of 10^4 shards on every resume would cost minutes on an object store)."""

    shards: int  # complete before this run
    first: str  # split/shard whose header was read
    policy: dict[str, dict] | None  # None: a version 1 header, which records no policy
    differences: list[str]  # from this run's policy, for the modalities both record

    def message(self) -> str | None:
        if not self.differences:
            return None
        return (f"warning: the {self.shards} shard{'s' if self.shards != 1 else ''} already complete were encoded "
                f"with another policy than this run ({'; '.join(self.differences)}: earlier != now, from the "
                f"header of {self.first}, the only one read); their tokens mean the same, and `uti verify` checks "
                "each shard against its own header")


def earlier_shards(done: Mapping[tuple[str, str], Any], order: Iterable[tuple[str, str]],
                   policy: Policies | None) -> EarlierShards | None:
    """Compare this run's policy with the header of the first complete shard in plan `order` (None: no
    complete shard, or this run has no policy to compare)."""
    from sharding.errors import ShardError
    from sharding.format import header_policy
    from sharding.parser import TarBroken

    first = next((key for key in order if key in done), None)
    if first is None or policy is None:
        return None
    where = f"{first[0]}/{first[1]}"
    try:
        recorded = header_policy(read_header(done[first].tar_path))
    except (ShardError, TarBroken, OSError) as exc:  # a damaged shard is verify's to report; this is a note only
        log.warning("cannot read the header of %s to compare its encode policy: %s", where, exc)
        return None
    if recorded is None:
        log.info("the %d shards already complete have version 1 headers (no encode policy recorded)", len(done))
        return EarlierShards(shards=len(done), first=where, policy=None, differences=[])
    common = set(recorded) & set(policy)
    differences = policy_differences({m: recorded[m] for m in common}, {m: policy[m] for m in common})
    return EarlierShards(shards=len(done), first=where, policy=dict(recorded), differences=differences)
