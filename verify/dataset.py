"""Load the dataset-level files of OUT (token space, plan, errors.jsonl, job.json) and find its shards.

Nothing here raises for a damaged dataset: what cannot be read becomes a `problem` string that the
reduce turns into a failing check. Only a dataset without any usable token space is a user error,
since no token can be checked without one.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from sharding.errors import ShardError
from sharding.format import INDEX_SUFFIX, TAR_SUFFIX, Orphan, find_orphans, list_shards, read_index, url_to_fs
from sharding.outdir import (JOB_NAME, PLAN_NAME, SPACE_NAME, exists, load_errors, load_job, load_plan,
                             load_space, path_of)
from sharding.plan import Plan, PlanError
from sharding.storage import storage_errors
from uti.errors import TokenSpaceError, UTIError
from uti.token_space import TokenSpace


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
        space = load_space(out)
    except TokenSpaceError as exc:
        space_problem = str(exc)
    if token_space is not None:
        expected, source = TokenSpace.load(token_space), str(token_space)  # a bad --token-space is a user error
    elif space is not None:
        expected, source = space, path_of(out, SPACE_NAME)
    elif not exists(out, SPACE_NAME):
        raise UTIError(f"{path_of(out, SPACE_NAME)}: missing, and without a token space no token can be checked; "
                       f"pass the OUT folder of a `uti tokenize` run, or give the expected token space with "
                       f"--token-space FILE")
    else:  # the problem names the file and how to restore it; verify can also take the expected one
        raise UTIError(f"{space_problem}; or give the expected token space with --token-space FILE")

    plan, plan_problem, plan_sha = None, None, None
    try:
        plan, plan_sha = load_plan(out)
    except PlanError as exc:  # before OSError/ValueError: a PlanError is also a ValueError
        plan_problem = str(exc)
    except (OSError, ValueError) as exc:
        plan_problem = f"{path_of(out, PLAN_NAME)}: cannot read ({exc})"

    errors, error_problems = load_errors(out)

    job, job_problem = None, None
    try:
        job = load_job(out)
    except (OSError, ValueError) as exc:
        job_problem = str(exc)
    if job is None and job_problem is None:
        job_problem = f"{path_of(out, JOB_NAME)}: missing (a finished job writes it last)"

    shards, temps = discover_shards(out)
    return DatasetFiles(
        out=out, space=space, space_problem=space_problem, expected=expected, expected_source=source,
        plan=plan, plan_problem=plan_problem, plan_sha256=plan_sha, errors=errors, error_problems=error_problems,
        job=job, job_problem=job_problem, shards=shards, temp_files=temps,
    )


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
    from sharding.outdir import hold_lock

    out = os.fspath(out)
    # A running tokenize job's tar in flight looks like an orphan: never clean while one holds OUT.
    with hold_lock(out, job="verify --clean-orphans", flag="OUT"), storage_errors(out, "OUT"):
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
