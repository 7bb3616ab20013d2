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
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URL, with a fresh view of remote listings."""
    text = os.fspath(url)
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except ImportError:
        protocol = protocol_of(text) or "?"
        package = _PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        extra = f"pip install 'uti[{STORAGE_EXTRA}]'" if protocol in _PACKAGES else f"pip install {package}"
        raise StorageError(f"{text}: {protocol}:// URLs need {package}, which is not installed; "
                           f"run `{extra}` on every node (driver and Ray workers)") from None
    except ValueError as exc:  # fsspec: unknown protocol
        raise StorageError(f"{text}: not a usable path or URL ({exc})") from None
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


__all__ = ["STORAGE_EXTRA", "StorageError", "filesystem", "is_url", "protocol_of", "storage_errors"]
