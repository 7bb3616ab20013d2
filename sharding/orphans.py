"""Orphans of the shard commit protocol, and their removal (`uti tokenize` reruns, `uti verify --clean-orphans`).

The protocol (docs/FORMAT.md): delete the old index, publish the tar, publish the index last. An interrupted
writer can therefore leave exactly three kinds of leftovers, and only these are "orphans" that may be deleted:

* ``tar_without_index``: OUT/shards/SPLIT/NAME.tar with no NAME.json next to it (never completed);
* ``temp_file``: a writer's temporary file in OUT/shards/SPLIT (local disks only; object-store staging is local);
* ``incomplete_upload``: an S3 multipart upload of OUT/shards/SPLIT/NAME.tar that was started and never
  completed or aborted (a writer killed mid-upload). It is invisible in listings but kept (and billed) by S3
  until aborted.

Anything else that is wrong (an index without tar, an invalid index, a tar whose size differs from its index)
is damage, not a leftover of the protocol: it is reported by `uti verify` and redone by `uti tokenize`, but
never deleted here. Nothing outside OUT/shards/SPLIT/ is ever touched.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from typing import Iterable

from sharding.format import SHARDS_DIR, TAR_SUFFIX, find_orphans, is_safe_name, url_to_fs
from sharding.storage import storage_errors

log = logging.getLogger(__name__)

REMOVABLE_KINDS = ("tar_without_index", "temp_file")


@dataclass(frozen=True)
class OrphanObject:
    """One leftover of an interrupted writer that may be deleted."""

    split: str
    name: str  # the shard it belongs to
    kind: str  # tar_without_index | temp_file | incomplete_upload
    url: str
    upload_id: str | None = None  # incomplete_upload only


def find_orphan_objects(out: str | os.PathLike, shards: Iterable[tuple[str, str]] | None = None) -> list[OrphanObject]:
    """The deletable orphans under OUT/shards, of the given (split, shard) pairs only when `shards` is given."""
    out = os.fspath(out)
    wanted = None if shards is None else set(shards)
    found = [OrphanObject(o.split, o.name, o.kind, o.path) for o in find_orphans(out) if o.kind in REMOVABLE_KINDS]
    found += _incomplete_uploads(out)
    return sorted((o for o in found if wanted is None or (o.split, o.name) in wanted),
                  key=lambda o: (o.split, o.name, o.kind, o.url))


def remove_orphan_objects(out: str | os.PathLike, orphans: Iterable[OrphanObject]) -> list[OrphanObject]:
    """Delete these orphans (found by `find_orphan_objects` for this OUT); returns what was removed."""
    out = os.fspath(out)
    removed = []
    with storage_errors(out, "OUT"):
        fs, root = url_to_fs(out)
        shards_root = posixpath.join(root, SHARDS_DIR) + "/"
        for orphan in orphans:
            if orphan.kind == "incomplete_upload":
                bucket, key = _bucket_key(fs, orphan.url)
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=orphan.upload_id)
            else:
                _, path = url_to_fs(orphan.url)
                if not path.startswith(shards_root):  # never anything outside OUT/shards
                    raise ValueError(f"{orphan.url} is not under {out}/{SHARDS_DIR}")
                try:
                    fs.rm_file(path)
                except FileNotFoundError:
                    continue  # removed meanwhile (another cleaner): nothing left to do
            log.info("removed orphan %s (%s)", orphan.url, orphan.kind)
            removed.append(orphan)
    return removed


def _bucket_key(fs, url: str) -> tuple[str, str]:
    _, path = url_to_fs(url)
    bucket, _, key = path.partition("/")
    return bucket, key


def _incomplete_uploads(out: str) -> list[OrphanObject]:
    """S3 multipart uploads of shard tars under OUT/shards that were never completed (other stores: none)."""
    fs, root = url_to_fs(out)
    if not hasattr(fs, "call_s3"):
        return []
    bucket, _, prefix = root.partition("/")
    prefix = posixpath.join(prefix, SHARDS_DIR) + "/" if prefix else SHARDS_DIR + "/"
    found: list[OrphanObject] = []
    marker: dict[str, str] = {}
    with storage_errors(out, "OUT"):
        while True:
            page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
            for upload in page.get("Uploads", []):
                rel = upload["Key"][len(prefix):].split("/")
                if len(rel) == 2 and is_safe_name(rel[0]) and rel[1].endswith(TAR_SUFFIX) \
                        and is_safe_name(rel[1][: -len(TAR_SUFFIX)]):
                    found.append(OrphanObject(rel[0], rel[1][: -len(TAR_SUFFIX)], "incomplete_upload",
                                              f"s3://{bucket}/{upload['Key']}", upload["UploadId"]))
            if not page.get("IsTruncated"):
                return found
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


__all__ = ["OrphanObject", "REMOVABLE_KINDS", "find_orphan_objects", "remove_orphan_objects"]
