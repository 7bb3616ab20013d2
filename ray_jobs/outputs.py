"""What of the output folder is the tokenize job's alone: its error type and the clean-up before a rerun.

Everything else about OUT (file names, the token space / plan claims, errors.jsonl, job.json, which
shards are complete) is sharding.outdir, shared with verify and train.
"""

from __future__ import annotations

from sharding.format import find_orphans, url_to_fs
from uti.errors import UTIError


class JobError(UTIError):
    """The tokenize job cannot start or cannot finish; the message names the shard/file and the fix."""


def remove_stale_temp_files(out: str) -> int:
    """Leftovers of writers killed mid-shard; safe to remove because their shards are redone."""
    removed = 0
    for orphan in find_orphans(out):
        if orphan.kind == "temp_file":
            fs, path = url_to_fs(orphan.path)
            fs.rm(path)
            removed += 1
    return removed
