"""The result of a command whose report gates its exit code (`uti verify`, `uti eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class GatedReport:
    """report.json's dict and where it was written; `ok` is its verdict: every hard check passed."""

    report: dict[str, Any]
    json_path: Path
    html_path: Path
    baseline_path: Path | None  # a baseline this run wrote (--write-baseline), else None

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"])

    @property
    def exit_code(self) -> int:
        """0 when every hard check passed, 1 when one failed (errors exit 2 before any report)."""
        return 0 if self.ok else 1

    def check(self, name: str) -> dict[str, Any]:
        return next(c for c in self.report["checks"] if c["name"] == name)
