"""Load the dataset-level files of OUT (token space, plan, errors.jsonl, job.json) and find its shards.

Nothing here raises for a damaged dataset: what cannot be read becomes a `problem` string that the
reduce turns into a failing check. Only a dataset without any usable token space is a user error,
since no token can be checked without one.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from sharding.errors import ShardError
from sharding.format import INDEX_SUFFIX, TAR_SUFFIX, Orphan, find_orphans, list_shards, read_index, url_to_fs
from sharding.plan import PLAN_NAME, Plan, PlanError, plan_from_bytes
from sharding.storage import storage_errors
from uti.errors import TokenSpaceError, UTIError
from uti.token_space import JSON_NAME, SHA_NAME, TokenSpace, sha256_hex

ERRORS_NAME = "errors.jsonl"
JOB_NAME = "job.json"


@dataclass(frozen=True)
class ShardTask:
    """One shard as found on disk. Scanned only when it has a valid index and a tar."""

    split: str
    name: str
    tar_path: str | None
    index_path: str | None
    index: dict | None = field(default=None, hash=False, compare=False)
    problem: str | None = None  # why this is not a complete shard (orphan kind and reason)

    @property
    def label(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def scannable(self) -> bool:
        return self.tar_path is not None and self.index is not None


@dataclass
class DatasetFiles:
    out: str
    space: TokenSpace | None  # the dataset's own token_space.json
    space_problem: str | None
    expected: TokenSpace  # what every shard must carry: --token-space, else the dataset's own
    expected_source: str
    plan: Plan | None
    plan_problem: str | None
    plan_sha256: str | None
    errors: list[dict]
    error_problems: list[str]
    job: dict | None
    job_problem: str | None
    shards: list[ShardTask]
    temp_files: list[Orphan]


def _read(out: str, name: str) -> bytes:
    fs, root = url_to_fs(out)
    with fs.open(posixpath.join(root, name), "rb") as fh:
        return fh.read()


def _exists(out: str, name: str) -> bool:
    fs, root = url_to_fs(out)
    return fs.exists(posixpath.join(root, name))


def load_space_from(out: str) -> TokenSpace:
    """token_space.json + token_space.sha256 of OUT (local or fsspec), with the same rules as TokenSpace.load."""
    where = posixpath.join(out, JSON_NAME)
    try:
        raw = _read(out, JSON_NAME)
    except (OSError, ValueError) as exc:
        raise TokenSpaceError(f"{where}: cannot read ({exc})") from None
    space = TokenSpace.from_json_bytes(raw, where=where)
    try:
        recorded = _read(out, SHA_NAME).decode("utf-8", "replace").split()
    except (OSError, ValueError):
        raise TokenSpaceError(f"{posixpath.join(out, SHA_NAME)}: missing; token_space.json and token_space.sha256 travel together") from None
    if not recorded or recorded[0] != space.id:
        raise TokenSpaceError(f"{posixpath.join(out, SHA_NAME)}: records {recorded[0][:16] if recorded else ''!r} but "
                              f"{JSON_NAME} hashes to {space.id[:16]}; one of the two files was changed")
    return space


def load_dataset(out: str | os.PathLike, *, token_space: str | None = None) -> DatasetFiles:
    """The dataset-level files and shard list of OUT; a store that cannot be reached (credentials,
    endpoint) is one StorageError line."""
    out = os.fspath(out)
    with storage_errors(out, "OUT"):
        return _load_dataset(out, token_space=token_space)


def _load_dataset(out: str, *, token_space: str | None) -> DatasetFiles:
    fs, root = url_to_fs(out)
    if not fs.isdir(root):
        raise UTIError(f"{out}: no such dataset folder; pass the OUT folder of `uti tokenize`")

    space, space_problem = None, None
    try:
        space = load_space_from(out)
    except TokenSpaceError as exc:
        space_problem = str(exc)
    if token_space is not None:
        expected, source = TokenSpace.load(token_space), str(token_space)  # a bad --token-space is a user error
    elif space is not None:
        expected, source = space, posixpath.join(out, JSON_NAME)
    else:
        raise UTIError(f"{space_problem}. Without a token space no token can be checked: restore "
                       f"{JSON_NAME}/{SHA_NAME} or pass the expected one with --token-space FILE")

    plan, plan_problem, plan_sha = None, None, None
    try:
        raw = _read(out, PLAN_NAME)
        plan_sha = sha256_hex(raw)
        plan = plan_from_bytes(raw, where=posixpath.join(out, PLAN_NAME))
    except (OSError, ValueError) as exc:
        plan_problem = f"{posixpath.join(out, PLAN_NAME)}: cannot read ({exc})"
    except PlanError as exc:
        plan_problem = str(exc)

    errors, error_problems = _load_errors(out)

    job, job_problem = None, None
    try:
        job = json.loads(_read(out, JOB_NAME).decode("utf-8"))
        if not isinstance(job, dict):
            job, job_problem = None, f"{posixpath.join(out, JOB_NAME)}: not a JSON object"
    except (OSError, ValueError) as exc:
        job_problem = f"{posixpath.join(out, JOB_NAME)}: cannot read ({exc})"

    shards, temps = discover_shards(out)
    return DatasetFiles(
        out=out, space=space, space_problem=space_problem, expected=expected, expected_source=source,
        plan=plan, plan_problem=plan_problem, plan_sha256=plan_sha, errors=errors, error_problems=error_problems,
        job=job, job_problem=job_problem, shards=shards, temp_files=temps,
    )


def _load_errors(out: str) -> tuple[list[dict], list[str]]:
    where = posixpath.join(out, ERRORS_NAME)
    if not _exists(out, ERRORS_NAME):
        return [], [f"{where}: missing (a finished job writes it, empty when nothing failed)"]
    rows, problems = [], []
    for lineno, line in enumerate(_read(out, ERRORS_NAME).split(b"\n"), start=1):
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


def discover_shards(out: str) -> tuple[list[ShardTask], list[Orphan]]:
    """Every shard-like thing under OUT/shards: complete shards, and orphans we can still say something about.

    A shard whose tar size differs from its index (a truncated or replaced tar) keeps its valid
    index, so it is scanned and the scan says which sample is damaged.
    """
    tasks = [ShardTask(r.split, r.name, r.tar_path, r.index_path, dict(r.index)) for r in list_shards(out)]
    temps: list[Orphan] = []
    for o in find_orphans(out):
        directory = posixpath.dirname(o.path)
        tar = posixpath.join(directory, o.name + TAR_SUFFIX)
        idx = posixpath.join(directory, o.name + INDEX_SUFFIX)
        problem = f"{o.kind}: {o.reason}"
        if o.kind == "temp_file":
            temps.append(o)
        elif o.kind == "size_mismatch":
            try:
                tasks.append(ShardTask(o.split, o.name, tar, idx, read_index(idx), problem))
            except ShardError as exc:
                tasks.append(ShardTask(o.split, o.name, tar, idx, None, f"invalid_index: {exc}"))
        elif o.kind == "tar_without_index":
            tasks.append(ShardTask(o.split, o.name, tar, None, None, problem))
        elif o.kind == "index_without_tar":
            tasks.append(ShardTask(o.split, o.name, None, idx, None, problem))
        else:  # invalid_index: the tar may or may not be there; either way the shard does not exist
            tasks.append(ShardTask(o.split, o.name, tar, idx, None, problem))
    tasks.sort(key=lambda t: (t.split, t.name))
    return tasks, temps


def clean_orphans(out: str | os.PathLike) -> list:
    """`uti verify --clean-orphans`: delete the leftovers the shard commit protocol defines as orphans (a tar
    without index, a writer's temp file, an incomplete S3 multipart upload; sharding.orphans) and nothing else.
    Returns what was removed."""
    from sharding.orphans import find_orphan_objects, remove_orphan_objects

    out = os.fspath(out)
    with storage_errors(out, "OUT"):
        return remove_orphan_objects(out, find_orphan_objects(out))


def incomplete_uploads(out: str | os.PathLike) -> list:
    """Orphans that no shard listing shows (incomplete S3 multipart uploads), for the summary."""
    from sharding.orphans import find_orphan_objects

    out = os.fspath(out)
    with storage_errors(out, "OUT"):
        return [o for o in find_orphan_objects(out) if o.kind == "incomplete_upload"]


def job_config_dict(job: dict | None) -> dict | None:
    config = (job or {}).get("config")
    return config if isinstance(config, dict) else None


def manifest_paths(job: dict | None) -> list[dict[str, Any]]:
    entries = (job or {}).get("manifests")
    return [m for m in entries if isinstance(m, dict) and isinstance(m.get("path"), str)] if isinstance(entries, list) else []
