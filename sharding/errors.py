"""Errors of the shard format. Each message names the shard (and member or sample) and the fix.

They live in `sharding` rather than `uti.errors` because only the shard writer/reader raise them,
but they derive from `uti.errors.UTIError` so the CLI catches them with everything else.
"""

from __future__ import annotations

from uti.errors import TokenSpaceMismatch, UTIError


class ShardError(UTIError):
    """A shard, its index or its listing is malformed, unsafe, incomplete or inconsistent."""


class ShardWriteError(ShardError, ValueError):
    """The writer refused a sample or an argument (wrong dtype, out-of-range ID, duplicate key...)."""


class ShardTokenSpaceMismatch(ShardError, TokenSpaceMismatch):
    """A shard was made in another token space than the one the reader expects.

    Both a ShardError (so shard-level handlers see it) and a TokenSpaceMismatch (so code that
    handles mismatches generically, with `expected_id`, `found_id` and `changes`, sees it too).
    """
