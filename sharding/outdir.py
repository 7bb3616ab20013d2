"""The OUT folder of `uti tokenize`: its file names and every read and write of its dataset-level files.

OUT (a local path or an fsspec URL) holds

    token_space.json + token_space.sha256   the token space every shard was written with
    plan.json                               which IDs go into which shard (sharding.plan)
    shards/SPLIT/shard-NNNNNN.{tar,json}    the shards (sharding.format / sharding.writer)
    errors.jsonl                            the samples that could not be tokenized, rebuilt from the indexes
    job.json                                the finished run's summary (config, counts, timings)

This module is the only one that knows these names or opens these files: the tokenize job writes them,
verify and train read them, and the test fixtures write them through the same functions as the job, so a
change of layout is made here once. Reads go through `sharding.storage.filesystem` (via url_to_fs), so
object stores behave like local folders.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Any, Iterable

from sharding.format import SHARDS_DIR, ShardRef, is_local, list_shards, url_to_fs
from sharding.plan import Plan, plan_from_bytes
from sharding.storage import storage_errors
from uti.atomic import atomic_write
from uti.errors import TokenSpaceError, UTIError
from uti.token_space import JSON_NAME, SHA_NAME, TokenSpace, require_same, sha256_hex

log = logging.getLogger(__name__)

SPACE_NAME = JSON_NAME  # token_space.json (named in uti.token_space, which also writes run folders)
SPACE_SHA_NAME = SHA_NAME  # token_space.sha256
PLAN_NAME = "plan.json"
ERRORS_NAME = "errors.jsonl"
JOB_NAME = "job.json"
__all__ = ["SPACE_NAME", "SPACE_SHA_NAME", "PLAN_NAME", "ERRORS_NAME", "JOB_NAME", "SHARDS_DIR", "OutDirError",
           "path_of", "read_bytes", "write_bytes", "exists", "load_space", "write_space", "claim_space", "load_plan",
           "write_plan", "claim_plan", "plan_matches", "errors_bytes", "write_errors", "merge_errors", "load_errors",
           "job_bytes", "write_job", "load_job", "has_job", "completed_shards"]


class OutDirError(UTIError):
    """OUT cannot be used for this run (a file, or made from another plan); the message names the fix."""


# ---------------------------------------------------------------------------------------------- raw files

def path_of(out: str | os.PathLike, name: str) -> str:
    """How a file of OUT is named in messages: the user's OUT (path or URL) joined with the file name."""
    return posixpath.join(os.fspath(out), name)


def _locate(out: str | os.PathLike, name: str) -> tuple[Any, str]:
    fs, root = url_to_fs(out)
    return fs, posixpath.join(root, name)


def read_bytes(out: str | os.PathLike, name: str, *, flag: str = "OUT") -> bytes | None:
    """The bytes of OUT/name, None when it does not exist; an unreachable store is one StorageError naming `flag`."""
    out = os.fspath(out)
    with storage_errors(out, flag):
        fs, path = _locate(out, name)
        return fs.cat_file(path) if fs.exists(path) else None


def exists(out: str | os.PathLike, name: str) -> bool:
    fs, path = _locate(out, name)
    return fs.exists(path)


def write_bytes(out: str | os.PathLike, name: str, data: bytes) -> None:
    """Atomic on local disks (temp + fsync + rename); a single PUT on object stores."""
    fs, path = _locate(out, name)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    atomic_write(path, data)


# ---------------------------------------------------------------------------------------------- token space

def write_space(out: str | os.PathLike, space: TokenSpace) -> None:
    """token_space.json and its .sha256, the pair every reader checks against each other."""
    raw = space.canonical_json()
    write_bytes(out, SPACE_NAME, raw)
    write_bytes(out, SPACE_SHA_NAME, f"{sha256_hex(raw)}  {SPACE_NAME}\n".encode())


def load_space(out: str | os.PathLike) -> TokenSpace:
    """OUT's token space, checked against its .sha256 with the same rules as TokenSpace.load. Raises
    TokenSpaceError naming the file and the fix; callers wrap it in storage_errors with their flag."""
    out = os.fspath(out)
    where, sha_where = path_of(out, SPACE_NAME), path_of(out, SPACE_SHA_NAME)
    try:
        raw, sha = read_bytes(out, SPACE_NAME), read_bytes(out, SPACE_SHA_NAME)
    except (OSError, ValueError) as exc:
        raise TokenSpaceError(f"{where}: cannot read ({exc})") from None
    if raw is None:
        raise TokenSpaceError(f"{where}: missing; is {out} the OUT folder of `uti tokenize`? Pass that folder, "
                              f"or restore {SPACE_NAME} and {SPACE_SHA_NAME} from the job that made it")
    space = TokenSpace.from_json_bytes(raw, where=where)
    if sha is None:
        raise TokenSpaceError(f"{sha_where}: missing; {SPACE_NAME} and {SPACE_SHA_NAME} travel together: "
                              "restore both from the same tokenize job")
    recorded = (sha.decode("utf-8", "replace").split() or [""])[0]
    if recorded != sha256_hex(raw):
        raise TokenSpaceError(f"{sha_where}: records {recorded[:16]!r} but {where} hashes to {space.id[:16]}; one of "
                              "the two files was changed: restore both from the same tokenize job")
    return space


def claim_space(out: str | os.PathLike, space: TokenSpace) -> None:
    """Write the token space, or check that an existing OUT holds exactly this one."""
    out = os.fspath(out)
    existing = read_bytes(out, SPACE_NAME, flag="--out")
    if existing is None:
        write_space(out, space)
        return
    found = TokenSpace.from_json_bytes(existing, where=path_of(out, SPACE_NAME))
    require_same(space, found, what=f"output folder {out} (this run's vs the folder's)",
                 fix=f"{out} holds shards of another token space and tokens must never be mixed: use a new "
                     "--out, or rerun with the config and weights the folder was made with")


# ---------------------------------------------------------------------------------------------- plan

def write_plan(out: str | os.PathLike, plan: Plan) -> None:
    write_bytes(out, PLAN_NAME, plan.to_bytes())


def load_plan(out: str | os.PathLike) -> tuple[Plan, str]:
    """(plan, SHA-256 of plan.json's bytes). Raises PlanError for a malformed plan, OSError when missing."""
    out = os.fspath(out)
    raw = read_bytes(out, PLAN_NAME)
    if raw is None:
        raise FileNotFoundError(f"no {PLAN_NAME} in {out}")
    return plan_from_bytes(raw, where=path_of(out, PLAN_NAME)), sha256_hex(raw)


def plan_matches(out: str | os.PathLike, plan: Plan) -> bool:
    return read_bytes(out, PLAN_NAME, flag="--out") == plan.to_bytes()


def claim_plan(out: str | os.PathLike, plan: Plan) -> None:
    """Write plan.json, or check that an existing OUT was planned the same way. Needs no codec, so a run
    into the wrong folder fails before any actor starts (the token space is claimed once the first
    actor has loaded the codecs). The first touch of OUT: an object store that cannot be reached (no
    credentials, wrong endpoint) is one line here, before any Ray process starts."""
    out = os.fspath(out)
    with storage_errors(out, "--out"):
        _claim_plan(out, plan)


def _claim_plan(out: str, plan: Plan) -> None:
    fs, root = url_to_fs(out)
    if fs.exists(root) and not fs.isdir(root):
        raise OutDirError(f"--out {out} is an existing file, not a folder; give a new or existing folder")
    existing_plan = read_bytes(out, PLAN_NAME, flag="--out")
    if existing_plan is None:
        write_plan(out, plan)
        return
    if existing_plan != plan.to_bytes():
        old = plan_from_bytes(existing_plan, where=path_of(out, PLAN_NAME))
        why = (f"its manifests hash to {old.manifest_sha256[:12]}, these to {plan.manifest_sha256[:12]}"
               if old.manifest_sha256 != plan.manifest_sha256 else
               f"it was planned with shard target {old.target}, this run asks for {plan.target}")
        raise OutDirError(f"{out} was tokenized from another plan ({why}); rerun with the same manifests and "
                          "shard target to resume, or use a new --out")


# ---------------------------------------------------------------------------------------------- errors.jsonl

def errors_bytes(errors: Iterable[dict]) -> bytes:
    """errors.jsonl: one sorted-key JSON object per line, in the order given (the job sorts by ID)."""
    return "".join(json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in errors).encode()


def write_errors(out: str | os.PathLike, errors: Iterable[dict]) -> None:
    write_bytes(out, ERRORS_NAME, errors_bytes(errors))


def merge_errors(out: str | os.PathLike, refs: Iterable[ShardRef]) -> list[dict]:
    """errors.jsonl rebuilt from the shard indexes (so exactly-once like the shards), sorted by ID."""
    errors = sorted((e for r in refs for e in r.index.get("errors", [])), key=lambda e: e["id"])
    write_errors(out, errors)
    return errors


def load_errors(out: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(error rows, problems): a line that is not an object with a non-empty "id" is a problem naming its line."""
    out = os.fspath(out)
    where = path_of(out, ERRORS_NAME)
    raw = read_bytes(out, ERRORS_NAME)
    if raw is None:
        return [], [f"{where}: missing (a finished job writes it, empty when nothing failed)"]
    rows, problems = [], []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{where} line {lineno}: not valid JSON ({exc})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not row["id"]:
            problems.append(f"{where} line {lineno}: an error row is an object with a non-empty 'id'")
            continue
        rows.append(row)
    return rows, problems


# ---------------------------------------------------------------------------------------------- job.json

def job_bytes(job: dict) -> bytes:
    return (json.dumps(job, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_job(out: str | os.PathLike, job: dict) -> None:
    """Written last by a finished run: its presence means OUT is complete for its plan."""
    write_bytes(out, JOB_NAME, job_bytes(job))


def has_job(out: str | os.PathLike, *, flag: str = "OUT") -> bool:
    return read_bytes(out, JOB_NAME, flag=flag) is not None


def load_job(out: str | os.PathLike, *, flag: str = "OUT") -> dict | None:
    """job.json as an object; None when missing. Raises ValueError naming the file when it is not a JSON object."""
    out = os.fspath(out)
    raw = read_bytes(out, JOB_NAME, flag=flag)
    if raw is None:
        return None
    try:
        job = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path_of(out, JOB_NAME)}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(job, dict):
        raise ValueError(f"{path_of(out, JOB_NAME)}: not a JSON object")
    return job


# ---------------------------------------------------------------------------------------------- shards

def completed_shards(out: str | os.PathLike, space: TokenSpace, plan: Plan) -> dict[tuple[str, str], ShardRef]:
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
