"""The OUT folder of `uti tokenize`: its file names and every read and write of its dataset-level files.

OUT (a local path or an fsspec URL) holds

    token_space.json + token_space.sha256   the token space every shard was written with
    plan.json                               which IDs go into which shard (sharding.plan)
    shards/SPLIT/shard-NNNNNN.{tar,json}    the shards (sharding.format / sharding.writer)
    errors.jsonl                            the samples that could not be tokenized, rebuilt from the indexes
    job.json                                the finished run's summary (config, counts, timings)
    lock.json                               while a job writes OUT: which one (host, pid, since, command)

This module is the only one that knows these names or opens these files: the tokenize job writes them,
verify and train read them, and the test fixtures write them through the same functions as the job, so a
change of layout is made here once. Reads go through `sharding.storage.filesystem` (via url_to_fs), so
object stores behave like local folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import posixpath
import secrets
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from sharding.format import SHARDS_DIR, ShardRef, is_local, list_shards, to_url, url_to_fs
from sharding.plan import Plan, plan_from_bytes
from sharding.storage import storage_errors
from uti.atomic import atomic_write, create_temp
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
           "job_bytes", "write_job", "load_job", "has_job", "completed_shards", "LOCK_NAME", "OutLock", "OutLocked",
           "acquire_lock", "release_lock", "hold_lock", "read_lock"]


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
    """token_space.json and its .sha256, the pair every reader checks against each other: the bytes
    TokenSpace.write writes to a local folder, here on any store."""
    for name, data in space.files().items():
        write_bytes(out, name, data)


def load_space(out: str | os.PathLike) -> TokenSpace:
    """OUT's token space, checked against its .sha256 by TokenSpace.from_files (TokenSpace.load's rules,
    on any store). Raises TokenSpaceError naming the file and the fix; callers wrap it in storage_errors
    with their flag."""
    out = os.fspath(out)
    where, sha_where = path_of(out, SPACE_NAME), path_of(out, SPACE_SHA_NAME)
    try:
        raw, sha = read_bytes(out, SPACE_NAME), read_bytes(out, SPACE_SHA_NAME)
    except (OSError, ValueError) as exc:
        raise TokenSpaceError(f"{where}: cannot read ({exc})") from None
    if raw is None:
        raise TokenSpaceError(f"{where}: missing; is {out} the OUT folder of `uti tokenize`? Pass that folder, "
                              f"or restore {SPACE_NAME} and {SPACE_SHA_NAME} from the job that made it")
    return TokenSpace.from_files(raw, sha, where=where, sha_where=sha_where,
                                 fix="restore both from the same tokenize job")


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


def _require_folder(fs: Any, root: str, out: str, flag: str = "--out") -> None:
    if fs.exists(root) and not fs.isdir(root):
        raise OutDirError(f"{flag} {out} is an existing file, not a folder; give a new or existing folder")


def _claim_plan(out: str, plan: Plan) -> None:
    fs, root = url_to_fs(out)
    _require_folder(fs, root, out)
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


# ---------------------------------------------------------------------------------------------- the lock
# A job that writes OUT (`uti tokenize`, `uti verify --clean-orphans`) holds OUT/lock.json while it runs:
# who (host, pid, the process's start), since when, and the command. A second job refuses at once, naming
# the first. A lock whose owner is gone (same host, pid not running, or now another process, or the host
# rebooted) is taken over with a message; one from another host cannot be checked from here, so the
# refusal says how to remove it. Local disks: the lock is created whole and atomically (a hard link of a
# written temp file; O_EXCL where links are not supported). Object stores: a conditional PUT
# (If-None-Match: *, s3fs mode="create"; S3 and S3-compatible servers that implement it), read back to
# check it is ours; where the store has no conditional PUT, a check-then-PUT, read back the same way:
# best effort, two jobs starting within the same round trip could both pass.

LOCK_NAME = "lock.json"
LOCK_FORMAT = "uti.lock"
LOCK_VERSION = 1


class OutLocked(OutDirError):
    """OUT is held by another job (or by a lock that cannot be read); the message names it and the fix."""

    def __init__(self, message: str, *, holder: "OutLock | None" = None):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True, kw_only=True)
class OutLock:
    """The content of OUT/lock.json: which job holds OUT."""

    job: str  # the command, e.g. "tokenize"
    host: str
    pid: int
    since: str  # ISO 8601, UTC
    command: str
    token: str  # this acquisition's random ID: a release removes only its own lock
    boot_id: str | None = None  # Linux: the host's boot; a different one means the owner died with the host
    process_start: int | None = None  # Linux: the pid's start time in clock ticks; another value: a reused pid

    def to_bytes(self) -> bytes:
        return (json.dumps({"format": LOCK_FORMAT, "version": LOCK_VERSION, **dataclasses.asdict(self)},
                           indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "OutLock":
        """Raises ValueError saying what is wrong with the content."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not UTF-8 JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
            raise ValueError(f"not a {LOCK_FORMAT} object")
        data = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            lock = cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if isinstance(lock.pid, bool) or not isinstance(lock.pid, int) or lock.pid <= 0 \
                or not all(isinstance(v, str) for v in (lock.job, lock.host, lock.since, lock.command, lock.token)):
            raise ValueError("malformed fields")
        return lock

    def describe(self) -> str:
        return f"`{self.command}` (uti {self.job}, pid {self.pid} on host {self.host}, since {self.since})"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def gone(self) -> bool | None:
        """True when the owner surely no longer runs, False when it does, None when this host cannot tell."""
        if not self.on_this_host():
            return None
        boot = _boot_id()
        if self.boot_id and boot and boot != self.boot_id:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process: it runs
            pass
        state, started = _process_state(self.pid)
        if state == "Z":  # killed, not yet reaped by its parent
            return True
        return self.process_start is not None and started is not None and started != self.process_start


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _process_state(pid: int) -> tuple[str | None, int | None]:
    """(state letter, start time in clock ticks since boot) of a Linux process; (None, None) elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None, None


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    if os.path.basename(argv[0]) == "uti":
        argv[0] = "uti"
    return shlex.join(argv)


def _new_lock(job: str) -> OutLock:
    return OutLock(job=job, host=socket.gethostname(), pid=os.getpid(),
                   since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command=_command_line(),
                   token=secrets.token_hex(8), boot_id=_boot_id(), process_start=_process_state(os.getpid())[1])


def _remove_command(fs: Any, path: str) -> str:
    url = to_url(fs, path)
    if is_local(fs):
        return f"rm {shlex.quote(url)}"
    tool = {"s3": "aws s3 rm", "s3a": "aws s3 rm", "gs": "gcloud storage rm", "gcs": "gcloud storage rm"}
    prefix = tool.get(url.split("://", 1)[0])
    return f"{prefix} {url}" if prefix else f"delete the object {url}"


def read_lock(out: str | os.PathLike) -> OutLock | None:
    """Who holds OUT now; None when nobody does. A lock that cannot be read is an OutLocked error."""
    out = os.fspath(out)
    with storage_errors(out, "OUT"):
        fs, root = url_to_fs(out)
        path = posixpath.join(root, LOCK_NAME)
        return _read_lock(fs, path, out)


def _read_lock(fs: Any, path: str, out: str) -> OutLock | None:
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        return OutLock.from_bytes(raw)
    except ValueError as exc:
        raise OutLocked(f"{to_url(fs, path)} exists but is not a lock uti can read ({exc}); if no job is writing "
                        f"{out}, delete it (`{_remove_command(fs, path)}`) and rerun") from None


def acquire_lock(out: str | os.PathLike, *, job: str, flag: str = "--out") -> OutLock:
    """Take OUT's lock for this process, creating OUT if needed; returns it (give it to `release_lock`).
    Raises OutLocked naming the job that holds it; a dead owner's lock is taken over with a warning."""
    out = os.fspath(out)
    mine = _new_lock(job)
    with storage_errors(out, flag):
        fs, root = url_to_fs(out)
        _require_folder(fs, root, out, flag)
        path = posixpath.join(root, LOCK_NAME)
        replaced: OutLock | None = None
        for _ in range(3):  # each round: create, or judge the holder (a lost race just goes round again)
            if _create_lock(fs, path, mine.to_bytes()):
                if replaced is not None:
                    log.warning("%s: took over the lock of a job that is gone: %s no longer runs on this host",
                                out, replaced.describe())
                return mine
            held = _read_lock(fs, path, out)
            if held is None:
                continue  # released meanwhile
            gone = held.gone()
            if gone is False:
                raise OutLocked(f"{out} is in use: {held.describe()} is writing it; wait for it to finish or stop "
                                f"it, or give another {flag}", holder=held)
            if gone is None:
                raise OutLocked(
                    f"{out} is in use by {held.describe()}, on another host: uti cannot tell from here whether it "
                    f"still runs. If it does, wait for it or give another {flag}; if that job is dead, delete its "
                    f"lock (`{_remove_command(fs, path)}`) and rerun", holder=held)
            if _remove_if_same(fs, path, held):
                replaced = held
        raise OutLocked(f"{out}: other jobs keep taking its lock ({to_url(fs, path)}); let them finish or give "
                        f"another {flag}")


def release_lock(out: str | os.PathLike, lock: OutLock) -> None:
    """Remove OUT's lock if it is still `lock` (never another job's)."""
    out = os.fspath(out)
    with storage_errors(out, "OUT"):
        fs, root = url_to_fs(out)
        path = posixpath.join(root, LOCK_NAME)
        try:
            held = _read_lock(fs, path, out)
        except OutLocked:
            held = None
        if held is None or held.token != lock.token:
            log.warning("%s: the lock is no longer this job's (now %s); left in place", out,
                        held.describe() if held else "none")
            return
        fs.rm(path)


@contextlib.contextmanager
def hold_lock(out: str | os.PathLike, *, job: str, flag: str = "--out") -> Iterator[OutLock]:
    """OUT's lock for the duration of a block. A local OUT that the lock alone created (the job failed
    before writing anything) is removed again, so a refused or failed start leaves no empty folder."""
    out = os.fspath(out)
    fs, root = url_to_fs(out)
    new_folder = is_local(fs) and not fs.exists(root)
    lock = acquire_lock(out, job=job, flag=flag)
    try:
        yield lock
    finally:
        release_lock(out, lock)
        if new_folder:
            with contextlib.suppress(OSError):
                os.rmdir(root)  # only when empty


def _create_lock(fs: Any, path: str, data: bytes) -> bool:
    """Create the lock file or object with `data` unless one exists: whether this call created it."""
    if is_local(fs):
        return _create_local(path, data)
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError, ValueError):  # this filesystem has no conditional create
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
    try:
        return fs.cat_file(path) == data  # a store that ignored the condition: ours only if it holds our bytes
    except FileNotFoundError:
        return False


def _create_local(path: str, data: bytes) -> bool:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = create_temp(directory, LOCK_NAME)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the lock exists: it appears whole or not at all
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            return _create_exclusive(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_exclusive(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _remove_if_same(fs: Any, path: str, held: OutLock) -> bool:
    """Remove the lock if it still is `held` (judged gone); whether it was removed."""
    if not is_local(fs):
        try:
            same = OutLock.from_bytes(fs.cat_file(path)) == held
        except (FileNotFoundError, ValueError):
            return False
        if same:
            fs.rm(path)
        return same
    # Moved aside first: of two jobs taking over at once, only one moves it, and checks what it moved.
    aside = f"{path}.gone-{secrets.token_hex(6)}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        with open(aside, "rb") as fh:
            moved = OutLock.from_bytes(fh.read())
    except (OSError, ValueError):
        moved = None
    if moved != held:  # a new owner's lock, taken in between: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)
    return moved == held
