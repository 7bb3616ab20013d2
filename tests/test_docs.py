"""The manual: the docs site builds strictly, no internal link or anchor is broken, and every `uti` command
and flag the pages name exists in the argparse parsers.

The link and command checks read whatever README.md, CONTRIBUTING.md and docs/*.md hold and need no
MkDocs; the build test needs the `docs` extra (in `dev`) and says so when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from uti.cli import build_parser
from uti.cli_reference import commands, render_cli_reference, subparsers_action

ROOT = Path(__file__).resolve().parent.parent
# Site pages made at build time (docs/hooks/cli_reference.py), which a page may link to.
GENERATED = {ROOT / "docs" / "cli.md": lambda: render_cli_reference(build_parser())}

# `uti` invocations the docs show that the parsers do not accept, each with the reason it is kept.
# An entry is (file relative to the repository root, command path, the unknown word).
ALLOWED: set[tuple[str, str, str]] = set()


def doc_files(root: Path = ROOT) -> list[Path]:
    files = [root / name for name in ("README.md", "CONTRIBUTING.md") if (root / name).is_file()]
    return files + sorted(p for p in (root / "docs").rglob("*.md") if "hooks" not in p.relative_to(root).parts)


# -- reading Markdown as GitHub does -------------------------------------------------------------------

_FENCE = re.compile(r"^ *(```+|~~~+)")
_CODE_SPAN = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HREF = re.compile(r"<a\s[^>]*\bhref=\"([^\"]+)\"")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?", re.M)
_HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:id|name)=\"([^\"]+)\"")
_ATTR_ANCHOR = re.compile(r"\{:?\s*#([\w-]+)[^}]*\}\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Markdown:
    """A page split the way its links and commands are read: `text` without its fenced blocks and
    `prose` also without its code spans (both blanked, so line numbers stay), and the code (fenced lines,
    inline spans) with the line where each piece starts."""

    path: Path
    text: str
    prose: str
    code: list[tuple[int, str]]

    @classmethod
    def read(cls, path: Path, text: str | None = None) -> "Markdown":
        lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
        prose, code, fence = [], [], None
        for number, line in enumerate(lines, 1):
            opened = _FENCE.match(line)
            if fence is None and opened:
                fence, line = opened.group(1), ""
            elif fence is not None:
                if opened and opened.group(1).startswith(fence):
                    fence = None
                else:
                    code.append((number, line))
                line = ""
            prose.append(line)
        text = "\n".join(prose)
        spans = [(text.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())) for m in _CODE_SPAN.finditer(text)]
        blanked = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
        return cls(path, text, blanked, _join_continuations(code) + spans)

    def where(self, number: int) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{number}"

    def anchors(self) -> set[str]:
        """GitHub's heading anchors (a repeated heading gets -1, -2, ...) and explicit ones."""
        found: set[str] = set()
        seen: dict[str, int] = {}
        lines = self.text.splitlines()
        for i, line in enumerate(lines):
            heading = _HEADING.match(line)
            title = heading.group(2) if heading else None
            if title is None and i and lines[i - 1].strip() and re.match(r"^ {0,3}(=+|-+)[ \t]*$", line) \
                    and not lines[i - 1].lstrip().startswith(("|", "-", "*")):
                title = lines[i - 1].strip()
            if title is not None:
                attr = _ATTR_ANCHOR.search(title)
                if attr:
                    found.add(attr.group(1))
                    continue
                slug = github_slug(title)
                found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
                seen[slug] = seen.get(slug, 0) + 1
        return found | set(_HTML_ANCHOR.findall(self.prose))

    def links(self) -> list[tuple[int, str]]:
        return [(self.prose.count("\n", 0, m.start()) + 1, m.group(1))
                for pattern in (_LINK, _HREF, _REFERENCE) for m in pattern.finditer(self.prose)]


def _join_continuations(code: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Shell lines continued with a trailing backslash, as one line numbered where it starts."""
    joined: list[tuple[int, str]] = []
    carry: tuple[int, str] | None = None
    for number, line in code:
        start, text = (carry[0], carry[1] + " " + line.strip()) if carry else (number, line)
        if text.rstrip().endswith("\\"):
            carry = (start, text.rstrip()[:-1].rstrip())
        else:
            joined.append((start, text))
            carry = None
    return joined + ([carry] if carry else [])


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: its text (markup removed) lowercased, every character that is
    not a letter, digit, space, hyphen or underscore dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(?<!\w)_+|_+(?!\w)|[*`]", "", text)
    text = unicodedata.normalize("NFC", text).strip().lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


# -- (b) internal links ----------------------------------------------------------------------------

def broken_links(page: Markdown, root: Path = ROOT, generated: dict | None = None) -> list[str]:
    generated = GENERATED if generated is None else generated
    problems = []
    for number, target in page.links():
        path, _, anchor = target.partition("#")
        if _SCHEME.match(path):
            continue
        resolved = ((root / path.lstrip("/")) if path.startswith("/") else (page.path.parent / path)).resolve() \
            if path else page.path.resolve()
        made = generated.get(resolved)
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{page.where(number)}: {target}: outside the repository")
        elif made is None and not resolved.exists():
            problems.append(f"{page.where(number)}: {target}: no such file")
        elif anchor and resolved.suffix == ".md":
            target_page = Markdown.read(resolved, made() if made else None)
            if anchor not in target_page.anchors():
                problems.append(f"{page.where(number)}: {target}: no heading with anchor #{anchor} in "
                                f"{resolved.name}")
    return problems


def test_no_broken_internal_links():
    problems = [p for path in doc_files() for p in broken_links(Markdown.read(path))]
    assert not problems, "broken links (relative to the file, GitHub anchors):\n" + "\n".join(problems)


def test_the_link_check_finds_missing_files_anchors_and_links_out_of_the_repository(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# The `uti` format: v3\n\n## Same\n\n## Same\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#the-uti-format-v3) [ok](docs/a.md#same-1) [ok](#top) `[code](x.md)`\n\n"
                    "# Top\n\n[gone](docs/b.md)\n[bad anchor](docs/a.md#same-2)\n[out](../elsewhere.md)\n"
                    "```\n[in code](nothing.md)\n```\n[web](https://example.com/x.md) [ref][r]\n\n[r]: docs/c.md\n")
    problems = broken_links(Markdown.read(page), root=tmp_path, generated={})
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md: no such file",
        "docs/a.md#same-2: no heading with anchor #same-2 in a.md",
        "../elsewhere.md: outside the repository",
        "docs/c.md: no such file",
    ]


# -- (c) every `uti` command and flag ----------------------------------------------------------------

_CONTROL = re.compile(r"^[();<>|&]+$")
_WRAPPERS = {"$", "--", "time", "exec", "nohup", "env", "sudo"}
_FLAG = re.compile(r"^[\[(]*(--[A-Za-z0-9][\w-]*)(=?)")


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote in an example: read it word by word
        words = text.split()
    comment = next((i for i, w in enumerate(words) if w.startswith("#")), len(words))
    return words[:comment]  # a shell comment starts a word; `page.md#anchor` is no comment


def invocations(text: str) -> list[list[str]]:
    """The words after each `uti` that stands where a shell runs a command (line start, after `&&`, `|`,
    `;`, `--`, `$`, an `X=1` assignment, a wrapper such as `timeout 900`, or a `key:` as in YAML)."""
    words, found = _words(text), []
    for i, word in enumerate(words):
        before = words[i - 1] if i else None
        runs = (before is None or _CONTROL.match(before) or before in _WRAPPERS or before.endswith(":")
                or re.match(r"^\w+=", before) or (i > 1 and words[i - 2] == "timeout"))
        if word == "uti" and runs:
            rest = words[i + 1:]
            end = next((j for j, w in enumerate(rest) if _CONTROL.match(w)), len(rest))
            found.append(rest[:end])
    return found


def _is_placeholder(word: str) -> bool:
    return bool(re.search(r"[<\[{]|\.\.\.|…", word)) or word.isupper() or word.endswith((":", ",", "."))


def _values(action: argparse.Action, rest: list[str]) -> int:
    """How many of the next words an option takes as its values."""
    if action.nargs == 0:
        return 0
    if action.nargs in (None, "?") or isinstance(action.nargs, int):
        count = 1 if action.nargs in (None, "?") else action.nargs
        return min(count, len(rest)) if action.nargs != "?" or (rest and not rest[0].startswith("-")) else 0
    return next((j for j, w in enumerate(rest) if w.startswith("-")), len(rest))


def unknown_words(words: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(command path, word) for each subcommand or `--flag` in `uti WORDS` that the parsers do not have."""
    path, problems, i = "uti", [], 0
    while i < len(words):
        word = words[i]
        flag = _FLAG.match(word)
        i += 1
        if word == "--":
            break
        if flag:
            action = parser._option_string_actions.get(flag.group(1))
            if action is None:
                problems.append((path, flag.group(1)))
            elif not flag.group(2) and word == flag.group(0):
                i += _values(action, words[i:])
            continue
        if word.startswith("-"):
            continue
        subcommands = subparsers_action(parser)
        if subcommands is None:
            continue
        if word in subcommands.choices:
            parser, path = subcommands.choices[word], f"{path} {word}"
            continue
        if not _is_placeholder(word):
            problems.append((path, word))
        break
    return problems


def unknown_invocations(page: Markdown, parser: argparse.ArgumentParser) -> list[str]:
    name = str(page.path.relative_to(ROOT)) if page.path.is_relative_to(ROOT) else page.path.name
    problems = []
    for number, text in page.code:
        for words in invocations(text):
            for path, word in unknown_words(words, parser):
                if (name, path, word) not in ALLOWED:
                    kind = "flag" if word.startswith("--") else "command"
                    problems.append(f"{page.where(number)}: `{path}` has no {kind} {word!r}: {text.strip()}")
    return problems


def test_every_uti_command_and_flag_in_the_docs_exists():
    parser = build_parser()
    problems = [p for path in doc_files() for p in unknown_invocations(Markdown.read(path), parser)]
    assert not problems, ("the docs name commands or flags that `uti` does not have (fix the page, or the "
                          "parser):\n" + "\n".join(problems))


def test_the_command_check_reads_code_blocks_inline_code_and_nested_commands(tmp_path):
    page = tmp_path / "x.md"
    page.write_text(
        "Run `uti train --data OUT --out RUN --no-such-flag` or `uti tokenspace shw ts/`.\n"
        "Prose uti train --nothing is not code; `uti tokenize: error: --out s3://x` is a message.\n"
        "```bash\n"
        "export X=1 && uti tokenspace show ts/ --jsn   # --jsn is not a flag of show\n"
        "ray job submit -- \\\n  uti verify data/tok --decode-fraction 0.1 \\\n  --bogus 2\n"
        "timeout 900 uti --debug eval --checkpoint r --split '--not-a-flag' --prompt x | tee log\n"
        "pip install uti && uti CMD --help && uti tokenize --manifest a.jsonl --manifest b.jsonl --out o\n"
        "uti frobnicate\n"
        "```\n")
    problems = unknown_invocations(Markdown.read(page), build_parser())
    assert [p.split(": ", 2)[1] for p in problems] == [
        "`uti tokenspace show` has no flag '--jsn'",
        "`uti verify` has no flag '--bogus'",
        "`uti eval` has no flag '--prompt'",
        "`uti` has no command 'frobnicate'",
        "`uti train` has no flag '--no-such-flag'",
        "`uti tokenspace` has no command 'shw'",
    ], problems
    assert [p.split(": ")[0].rsplit("/", 1)[-1] for p in problems] == ["x.md:4", "x.md:5", "x.md:8", "x.md:10", "x.md:1", "x.md:1"]


# -- the CLI reference -----------------------------------------------------------------------------

def test_the_cli_reference_lists_every_command_and_every_option_with_its_help():
    parser = build_parser()
    page = render_cli_reference(parser)
    headings = re.findall(r"^#{2,6} (uti.*)$", page, re.M)
    assert headings == [c.name for c in commands(parser)]
    assert {"uti tokenspace show", "uti train", "uti verify"} <= set(headings)
    for command in commands(parser):
        for action in command.parser._actions:
            if action.option_strings and action.help not in (None, argparse.SUPPRESS):
                first_words = " ".join(action.help.split()[:3]).split("%")[0]
                assert action.option_strings[-1] in page and first_words in " ".join(page.split()), \
                    (command.name, action.option_strings)
    audit = page.split("### uti audit\n", 1)[1].split("\n### ", 1)[0]
    assert re.search(r"^\| `--decode-mode \{deterministic,diffusion\}` \| [^|]+ \| `deterministic` \|$", audit, re.M), \
        "the choices in the argument, the default in its own column"
    assert re.search(r"^\| `--out OUT` \| [^|]+ \| required \|$", audit, re.M)


def test_the_cli_reference_reads_the_same_at_any_terminal_width(monkeypatch):
    """`add_command` wraps descriptions at the terminal's width; the page joins the lines again, and
    keeps the list items of a description as a Markdown list (a blank line before the first)."""
    def descriptions(columns: int) -> list[str]:
        monkeypatch.setenv("COLUMNS", str(columns))
        page = render_cli_reference(build_parser())
        return [section.split("```text", 1)[0] for section in re.split(r"^#{2,6} uti.*$", page, flags=re.M)[1:]]

    narrow = descriptions(40)
    assert narrow == descriptions(400)
    lists = [d for d in narrow if "\n* " in d]
    assert lists, "some description has list items (uti eval's)"
    assert all("\n\n* " in d for d in lists), lists


# -- (a) the site ----------------------------------------------------------------------------------

def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    missing = [m for m in ("mkdocs", "material", "pymdownx") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the docs site needs the `docs` extra (pip install -e '.[docs]' -c constraints.txt): "
                    f"{', '.join(missing)} not importable")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_site_builds_strictly_with_the_generated_cli_reference(tmp_path):
    built = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr[-4000:]
    html = (tmp_path / "site" / "cli" / "index.html").read_text()
    for command in commands(build_parser()):
        assert f'id="{"-".join(command.path)}"' in html, command.name
    assert not (ROOT / "docs" / "cli.md").exists(), "cli.md is generated at build time, never committed"


def test_the_site_takes_contributing_from_the_root_and_follows_the_pages_that_exist(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(ROOT / "docs" / "hooks", tmp_path / "docs" / "hooks")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("")
    (tmp_path / "CONTRIBUTING.md").write_text("# Contributing\n\nSee [the index](docs/index.md#usage) and "
                                              "[the code](src/code.py).\n")
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n## Usage\n\n[How to help](../CONTRIBUTING.md)\n")
    (tmp_path / "docs" / "extra.md").write_text("# A page the nav does not name\n")
    built = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr[-4000:]
    contributing = (tmp_path / "site" / "contributing" / "index.html").read_text()
    assert '<a href="../#usage">the index</a>' in contributing and "the code" in contributing
    assert "code.py" not in contributing, "a link to a file outside docs/ is plain text without repo_url"
    home = (tmp_path / "site" / "index.html").read_text()
    assert '<a href="contributing/">How to help</a>' in home and 'href="extra/"' in home
    assert 'href="datasets/"' not in home, "a nav entry whose page does not exist is left out"

    (tmp_path / "docs" / "extra.md").write_text("# Extra\n\n[gone](gone.md) [anchor](index.md#nowhere)\n")
    failed = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert failed.returncode != 0
    assert "gone.md" in failed.stderr and "#nowhere" in failed.stderr, failed.stderr[-4000:]
