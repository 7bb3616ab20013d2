"""Filesystems behind local paths and object-store URLs (`s3://`, `gs://`, ...), and their errors.

Every path in OUT, in a manifest root or in `--data` goes through `filesystem()`: fsspec picks the
implementation by protocol. Two things are ours:

* an implementation that is not installed (s3fs, gcsfs) is one line naming the extra that brings it,
  not fsspec's ImportError;
* listings are never served from fsspec's directory cache. Shards are written by other processes (Ray
  actors) while the driver polls and lists, so a cached listing of OUT/shards would hide finished
  shards or show deleted ones.

Credentials come from each library's standard chain (for S3: AWS_* variables, ~/.aws, instance
metadata; `AWS_ENDPOINT_URL` for an S3-compatible server). We never read, store or print them;
`storage_errors` turns the usual failures (no credentials, unreachable endpoint, access denied) into
one line that names the URL and the fix.

`--storage-options JSON` (or `@file.json`) is the other way: a JSON object of fsspec options for every
object-store URL (e.g. `{"key": .., "secret": .., "client_kwargs": {"endpoint_url": ..}}` or
`{"anon": true}`). `configure_storage_options` validates it and puts it into this process's environment
as UTI_STORAGE_OPTIONS; `filesystem()` reads it from there, and uti.ray_local forwards that variable to
every actor, task and Ray Train worker like AWS_*. So the options exist in exactly one place per process
and never travel in a config object that could be written to job.json, plan.json, run_config.json or a
report. Error messages about them name the flag and the JSON position, never the content.

Uploads (see `upload_file`): a shard is PUT whole when it is smaller than two parts, else as an S3
multipart upload with an explicit part size (s3fs `chunksize`, from the option `default_block_size`,
default UPLOAD_PART_BYTES) and at most `max_concurrency` parts in flight (default UPLOAD_CONCURRENCY).
s3fs reads every in-flight part into memory, so one upload holds at most part x concurrency bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from uti.errors import UTIError

STORAGE_EXTRA = "s3"
# What `pip install` needs per protocol; the s3 extra installs both object-store filesystems.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


class StorageError(UTIError, OSError):
    """An object store cannot be used: filesystem not installed, no credentials, endpoint unreachable."""


def protocol_of(url: str | os.PathLike) -> str | None:
    """`s3` for `s3://b/k`, None for a local path."""
    text = os.fspath(url)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head and "/" not in head else None


def is_url(path: str | os.PathLike) -> bool:
    return protocol_of(path) not in (None, "file", "local")


# ---- --storage-options -------------------------------------------------------------------------------
STORAGE_OPTIONS_ENV = "UTI_STORAGE_OPTIONS"  # forwarded to Ray processes by uti.ray_local (never logged)
STORAGE_OPTIONS_FLAG = "--storage-options"
# Protocols the options are not meant for: local files and fsspec's in-process memory store.
_NO_OPTIONS = {None, "file", "local", "memory"}

# Multipart uploads. 32 MiB parts: a shard of 1000 samples is tens to hundreds of MB, so a few parts each,
# far from S3's 10,000-part limit (max object 320 GB at this size; s3fs raises the part size beyond that),
# and above S3's 5 MiB minimum. 4 parts in flight: enough to keep one connection pipeline busy while
# bounding memory to 4 x 32 MiB = 128 MiB per uploading writer (s3fs reads each in-flight part into memory;
# its own default of 10 x 50 MiB is 500 MB per writer, times the writers on a node).
UPLOAD_PART_BYTES = 32 * 2**20
UPLOAD_CONCURRENCY = 4
S3_MIN_PART_BYTES = 5 * 2**20


def _options_error(detail: str) -> StorageError:
    return StorageError(f"{STORAGE_OPTIONS_FLAG}: {detail}")


def parse_storage_options(value: str) -> dict[str, Any]:
    """The JSON object of `--storage-options JSON` or `--storage-options @file.json`.

    Errors name the flag (and the file) and the JSON position, never the text: it may hold a secret."""
    text = value
    where = "the value"
    if value.startswith("@"):
        path = value[1:]
        where = path
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _options_error(f"cannot read {path} ({type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8'}); "
                                 "give a JSON object or @FILE with one") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:  # the message is the position only ("Expecting ',' ..: line 1 column 9")
        raise _options_error(f"{where} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
                             "give a JSON object such as '{\"anon\": true}' or @FILE.json") from None
    if not isinstance(data, dict):
        raise _options_error(f"{where} must be a JSON object of fsspec options, got a {type(data).__name__}")
    _check_upload_options(data)
    return data


def _check_upload_options(data: dict[str, Any]) -> None:
    part = data.get("default_block_size")
    if part is not None and (not isinstance(part, int) or isinstance(part, bool) or part < S3_MIN_PART_BYTES):
        raise _options_error(f"default_block_size (the upload part size) must be an integer >= {S3_MIN_PART_BYTES} "
                             "(S3's minimum part size, 5 MiB)")
    conc = data.get("max_concurrency")
    if conc is not None and (not isinstance(conc, int) or isinstance(conc, bool) or conc < 1):
        raise _options_error("max_concurrency (parts uploaded at once) must be an integer >= 1")


def configure_storage_options(value: str | None) -> None:
    """Install `--storage-options` for this process and every Ray process it starts (None: leave as is)."""
    if value is None:
        return
    os.environ[STORAGE_OPTIONS_ENV] = json.dumps(parse_storage_options(value), sort_keys=True)


def storage_options() -> dict[str, Any]:
    """The installed options ({} when none). A damaged variable is one line naming it, not its content."""
    raw = os.environ.get(STORAGE_OPTIONS_ENV)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise StorageError(f"{STORAGE_OPTIONS_ENV} (set from {STORAGE_OPTIONS_FLAG}) is not a JSON object; "
                           f"unset it or pass {STORAGE_OPTIONS_FLAG} again")
    return data


def _fs_options(protocol: str | None) -> dict[str, Any]:
    return {} if protocol in _NO_OPTIONS else storage_options()


@dataclass(frozen=True)
class UploadSettings:
    part_bytes: int
    concurrency: int


def upload_settings() -> UploadSettings:
    opts = storage_options()
    return UploadSettings(part_bytes=int(opts.get("default_block_size") or UPLOAD_PART_BYTES),
                          concurrency=int(opts.get("max_concurrency") or UPLOAD_CONCURRENCY))


def upload_file(fs: fsspec.AbstractFileSystem, local: str, remote: str) -> None:
    """Upload a local file: for S3 with an explicit part size and bounded parallel parts (see the module doc)."""
    if "s3" in _protocols(fs):
        settings = upload_settings()
        fs.put_file(local, remote, chunksize=settings.part_bytes, max_concurrency=settings.concurrency)
    else:
        fs.put_file(local, remote)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URL, with a fresh view of remote listings."""
    text = os.fspath(url)
    try:
        fs, path = fsspec.core.url_to_fs(text, **_fs_options(protocol_of(text)))
    except ImportError:
        protocol = protocol_of(text) or "?"
        package = _PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        extra = f"pip install 'uti[{STORAGE_EXTRA}]'" if protocol in _PACKAGES else f"pip install {package}"
        raise StorageError(f"{text}: {protocol}:// URLs need {package}, which is not installed; "
                           f"run `{extra}` on every node (driver and Ray workers)") from None
    except ValueError as exc:  # fsspec: unknown protocol
        raise StorageError(f"{text}: not a usable path or URL ({exc})") from None
    except TypeError as exc:  # an option the filesystem does not take; its name only, never a value
        raise _options_error(f"an option is not accepted by the {protocol_of(text)}:// filesystem "
                             f"({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache()  # other processes write here: never answer from a stale listing
    return fs, path


def _is_storage_failure(exc: BaseException) -> str | None:
    """The fix for a failure that means "this store cannot be reached as configured", else None."""
    mod = type(exc).__module__ or ""
    name = type(exc).__name__
    if mod.startswith("botocore"):
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return ("no usable credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an "
                    "instance role (the standard AWS credential chain)")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError"):
            return ("cannot connect to the endpoint: check AWS_ENDPOINT_URL (for an S3-compatible server) and "
                    "the network")
        return "the S3 client failed: check the endpoint, region and credentials"
    if mod.startswith("google.auth"):
        return "no usable Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS or run on a node with a service account"
    if isinstance(exc, PermissionError):
        return "access denied: the credentials in use may not read or write here"
    return None


def _reason(exc: BaseException) -> str:
    # botocore messages name the operation and the URL, never the secret key; keep only their first line.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


@contextlib.contextmanager
def storage_errors(url: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn a store that cannot be used (credentials, endpoint, access) into one StorageError line."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - only the failures `_is_storage_failure` recognises are converted
        fix = _is_storage_failure(exc) if is_url(url) else None  # local errors keep their own messages
        if fix is None:
            raise
        label = f"{what} " if what else ""
        raise StorageError(f"{label}{os.fspath(url)}: {fix} ({_reason(exc)})") from None


def add_storage_options_flag(parser: Any) -> None:
    """`--storage-options` on a command that reads or writes URLs (the CLI then calls configure_storage_options)."""
    parser.add_argument(STORAGE_OPTIONS_FLAG, default=None, metavar="JSON",
                        help="fsspec options for s3:// / gs:// URLs as a JSON object or @FILE.json, e.g. "
                             "'{\"client_kwargs\": {\"endpoint_url\": \"http://host:9000\"}}' or '{\"anon\": true}'; "
                             "passed to Ray workers like AWS_* variables, never written to any output")


__all__ = ["STORAGE_EXTRA", "STORAGE_OPTIONS_ENV", "StorageError", "UploadSettings", "add_storage_options_flag",
           "configure_storage_options", "filesystem", "is_url", "parse_storage_options", "protocol_of",
           "storage_errors", "storage_options", "upload_file", "upload_settings"]
