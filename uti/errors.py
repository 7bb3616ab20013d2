"""Error types. Every error a user can meet is one of these, and its message says what, where and the fix.

Keeping them in one small module lets every package (and the CLI) catch "our" errors as a family
and print one clear line instead of a traceback.
"""

from __future__ import annotations

import re


class UTIError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(UTIError, ValueError):
    """A configuration file or dataclass got an unknown key, a wrong type or an impossible value."""


class TokenSpaceError(UTIError, ValueError):
    """A token space is malformed (overlap, gap, wrong vocab size, specials outside their range)."""


class TokenSpaceMismatch(UTIError):
    """Two things that must share a token space do not. The message names both IDs and the diff."""

    def __init__(self, message: str, *, expected_id: str, found_id: str, changes: list[str]):
        super().__init__(message)
        self.expected_id = expected_id
        self.found_id = found_id
        self.changes = changes


class RuntimeSizeMismatch(UTIError):
    """A size recorded in the config or token space differs from what the loaded model reports."""


class DecodeRefused(UTIError, ValueError):
    """Tokens or meta given to a decoder break a rule (count, range, level, boundary). Never coerced."""


class DecodeUnavailable(UTIError):
    """The codec has no decoder configured (e.g. SEED without its unCLIP pipeline): decoding is not
    possible here, which is not a fault of the tokens. Checks report it as skipped with this reason."""


class MediaError(UTIError):
    """A media file cannot be read or is unusable (corrupt, empty, NaN, wrong channels, too long)."""

    def __init__(self, message: str, *, stage: str, reason: str):
        super().__init__(message)
        self.stage = stage
        self.reason = reason


class WeightsError(UTIError):
    """Codec weights cannot be found or loaded from the requested source."""


_OBJECT_REPR = re.compile(r"<[A-Za-z_][\w.]* object at 0x[0-9a-fA-F]+>")


def without_object_reprs(text: str, *, name: str = "the data") -> str:
    """`text` with every `<module.Class object at 0x...>` replaced by `name`. Libraries name an in-memory
    file by its repr (PIL: "cannot identify image file <_io.BytesIO object at 0x7f...>", libsndfile:
    "Error opening <_io.BytesIO object at 0x7f...>"); a memory address means nothing to a user and makes
    the same failure differ from run to run."""
    return _OBJECT_REPR.sub(name, text)
