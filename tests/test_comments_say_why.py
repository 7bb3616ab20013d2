"""Comments and docstrings give the reason, never the history: what changed and when belongs in git and
CHANGELOG.md. A reference to an issue or a turn, or a comparison with an earlier version of the code, is a note
about the past that a reader cannot check against the code in front of them.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("uti", "sharding", "ray_jobs", "verify", "train", "demo", "bench", "cluster", "tests")
HISTORY = re.compile(r"\b[Ii]ssues? #?\d+|\bturn \d+\b|\b[Uu]ntil issue\b|\b[Bb]efore issue\b|\bas before\b")


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    source = path.read_text(encoding="utf-8")
    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((node.body[0].lineno, doc))
    return found


def history_notes(paths) -> list[str]:
    hits = []
    for path in paths:
        for line, text in sorted(comments_and_docstrings(path)):
            for m in HISTORY.finditer(text):
                hits.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r} in {text.strip()[:90]!r}")
    return hits


def our_python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_comment_or_docstring_narrates_history():
    hits = history_notes(our_python_files())
    assert not hits, "comments must say why, not when (history goes to git and CHANGELOG.md):\n" + "\n".join(hits)


def test_the_scan_finds_a_history_note_in_a_comment_and_a_docstring(tmp_path, monkeypatch):
    sample = tmp_path / "pkg" / "m.py"
    sample.parent.mkdir()
    sample.write_text('"""Readers (issue 12)."""\n\nX = "issue 3 in a string is data, not a comment"\n\n'
                      'def f():\n    """Keeps the order."""\n    return 1  # the same as before\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    hits = history_notes([sample])
    assert len(hits) == 2 and "m.py:1: 'issue 12'" in hits[0] and "'as before'" in hits[1], hits
