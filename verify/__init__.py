"""Dataset-scale verification of a tokenized dataset (`uti verify`): one Ray task per shard, a reduce,
seeded decode/retokenize spot checks, codebook and length statistics, a loader smoke test and
baseline gating. Reports go to report.json and a self-contained report.html.

Public API: `VerifyConfig`, `BaselineLimits`, `run_verify` -> `VerifyResult`, `CHECKS` (the
check names that report.json uses) and `Check` (those names as a StrEnum).
"""

from verify.config import BaselineLimits, VerifyConfig
from verify.findings import CHECKS, Check

__all__ = ["BaselineLimits", "CHECKS", "Check", "VerifyConfig", "VerifyResult", "run_verify"]


def __getattr__(name: str):
    # Lazy: `uti --help` discovers the verify command without importing Ray and numpy-heavy modules.
    if name in ("run_verify", "VerifyResult"):
        from verify import run

        return getattr(run, name)
    raise AttributeError(name)
