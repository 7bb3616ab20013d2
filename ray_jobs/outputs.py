"""The job's output folder: refusing a foreign OUT, finding completed shards, and the summary files.

OUT may be a local path or an fsspec URL. Completed shards are those with a valid index whose token
space is the run's and whose samples + errors are exactly the plan's rows for that shard; everything
else is redone. errors.jsonl is always rebuilt from the shard indexes, so it is exactly-once too.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any, Iterable

from sharding.format import ShardRef, find_orphans, list_shards, url_to_fs, is_local
from sharding.plan import Plan, plan_from_bytes
from sharding.storage import storage_errors
from uti.atomic import atomic_write
from uti.errors import UTIError
from uti.token_space import JSON_NAME, SHA_NAME, TokenSpace, require_same, sha256_hex

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
ERRORS_NAME = "errors.jsonl"
JOB_NAME = "job.json"


class JobError(UTIError):
    """The tokenize job cannot start or cannot finish; the message names the shard/file and the fix."""


def _join(out: str, name: str) -> tuple[Any, str]:
    fs, root = url_to_fs(out)
    return fs, posixpath.join(root, name)


def read_bytes(out: str, name: str) -> bytes | None:
    with storage_errors(out, "--out"):
        fs, path = _join(out, name)
        return fs.cat_file(path) if fs.exists(path) else None


def write_bytes(out: str, name: str, data: bytes) -> None:
    """Atomic on local disks (temp + fsync + rename); a single PUT on object stores."""
    fs, path = _join(out, name)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    atomic_write(path, data)


def claim_out(out: str, space: TokenSpace, plan: Plan) -> None:
    """Write token space and plan, or check that an existing OUT was made with exactly these."""
    claim_plan(out, plan)
    claim_space(out, space)


def claim_plan(out: str, plan: Plan) -> None:
    """Write plan.json, or check that an existing OUT was planned the same way. Needs no codec, so a run
    into the wrong folder fails before any actor starts (the token space is claimed once the first
    actor has loaded the codecs). The first touch of OUT: an object store that cannot be reached (no
    credentials, wrong endpoint) is one line here, before any Ray process starts."""
    with storage_errors(out, "--out"):
        _claim_plan(out, plan)


def _claim_plan(out: str, plan: Plan) -> None:
    fs, root = url_to_fs(out)
    if fs.exists(root) and not fs.isdir(root):
        raise JobError(f"--out {out} is an existing file, not a folder; give a new or existing folder")
    existing_plan = read_bytes(out, PLAN_NAME)
    if existing_plan is not None and existing_plan != plan.to_bytes():
        old = plan_from_bytes(existing_plan, where=f"{out}/{PLAN_NAME}")
        why = (f"its manifests hash to {old.manifest_sha256[:12]}, these to {plan.manifest_sha256[:12]}"
               if old.manifest_sha256 != plan.manifest_sha256 else
               f"it was planned with shard target {old.target}, this run asks for {plan.target}")
        raise JobError(f"{out} was tokenized from another plan ({why}); rerun with the same manifests and "
                       "shard target to resume, or use a new --out")
    if existing_plan is None:
        write_bytes(out, PLAN_NAME, plan.to_bytes())


def claim_space(out: str, space: TokenSpace) -> None:
    """Write the token space, or check that an existing OUT holds exactly this one."""
    existing = read_bytes(out, JSON_NAME)
    if existing is not None:
        found = TokenSpace.from_json_bytes(existing, where=f"{out}/{JSON_NAME}")
        require_same(space, found, what=f"output folder {out} (this run's vs the folder's)",
                     fix=f"{out} holds shards of another token space and tokens must never be mixed: use a new "
                         "--out, or rerun with the config and weights the folder was made with")
    else:
        raw = space.canonical_json()
        write_bytes(out, JSON_NAME, raw)
        write_bytes(out, SHA_NAME, f"{sha256_hex(raw)}  {JSON_NAME}\n".encode())


def completed_shards(out: str, space: TokenSpace, plan: Plan) -> dict[tuple[str, str], ShardRef]:
    """Plan shards that are already done and consistent with the plan; the rest must be (re)written."""
    refs = {(r.split, r.name): r for r in list_shards(out)}
    done = {}
    for split, shard in plan.shards():
        ref = refs.get((split, shard.name))
        if ref is None:
            continue
        index = ref.index
        covered = list(index["ids"]) + [e["id"] for e in index.get("errors", [])]
        if index["token_space_id"] != space.id or sorted(covered) != sorted(shard.ids) or len(set(covered)) != len(covered):
            log.warning("%s/%s: index does not match the plan; it will be rewritten", split, shard.name)
            continue
        done[(split, shard.name)] = ref
    return done


def remove_stale_temp_files(out: str) -> int:
    """Leftovers of writers killed mid-shard; safe to remove because their shards are redone."""
    removed = 0
    for orphan in find_orphans(out):
        if orphan.kind == "temp_file":
            fs, path = url_to_fs(orphan.path)
            fs.rm(path)
            removed += 1
    return removed


def merge_errors(out: str, refs: Iterable[ShardRef]) -> list[dict]:
    errors = sorted((e for r in refs for e in r.index.get("errors", [])), key=lambda e: e["id"])
    write_bytes(out, ERRORS_NAME, "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in errors).encode())
    return errors


def write_job(out: str, job: dict) -> None:
    write_bytes(out, JOB_NAME, (json.dumps(job, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
