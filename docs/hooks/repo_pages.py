"""MkDocs hook: the site's pages and links as the repository has them.

- CONTRIBUTING.md lives at the repository root, where GitHub shows it; the site gets it as
  `contributing.md` without a second copy in git.
- The nav of mkdocs.yml is the order of the pages; a page it names that does not exist is left out and
  a page it does not name is added at the end, so the build follows the docs as they are.
- The pages link as GitHub resolves links (relative to the file in the repository). A link to a file
  outside docs/ (source code, README.md) becomes a link into `repo_url` when one is configured, else
  plain text: the site has no such page. A link to nothing stays, so a strict build reports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from mkdocs.structure.files import File, Files

# Pages of the site that are files elsewhere in the repository: page -> path from the repository root.
FROM_ROOT = {"contributing.md": "CONTRIBUTING.md"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
_LINK = re.compile(r"(!?\[(?P<text>[^\]]*)\]\()(?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files: Files, config, **kwargs) -> Files:
    root = _root(config)
    for page, source in FROM_ROOT.items():
        path = root / source
        if path.is_file() and files.get_file_from_path(page) is None:
            files.append(File.generated(config, page, abs_src_path=str(path)))
    pages = {f.src_uri for f in files.documentation_pages()}
    if config.nav is not None:
        kept = _existing(config.nav, pages)
        config.nav = kept + sorted(pages - set(_named(kept)))
    return files


def _existing(nav: list, pages: set[str]) -> list:
    """The nav without the entries whose page does not exist (and sections left empty)."""
    kept = []
    for item in nav:
        title, value = next(iter(item.items())) if isinstance(item, dict) else (None, item)
        if isinstance(value, list):
            value = _existing(value, pages)
            if not value:
                continue
        elif not (_SCHEME.match(value) or value in pages):
            continue
        kept.append({title: value} if title is not None else value)
    return kept


def _named(nav: list):
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            yield from _named(value)
        else:
            yield value


def on_page_markdown(markdown: str, page, config, files: Files, **kwargs) -> str:
    root = _root(config)
    docs = Path(config.docs_dir).resolve()
    source = root / FROM_ROOT[page.file.src_uri] if page.file.src_uri in FROM_ROOT else docs / page.file.src_uri
    rewrite = _LinkRewriter(root, docs, source, page.file.src_uri, config.repo_url)
    return _outside_code(markdown, lambda text: _LINK.sub(rewrite, text))


def _outside_code(markdown: str, edit) -> str:
    """Apply `edit` to the prose only: fenced blocks and code spans are shown as written."""
    out, prose, fenced = [], [], None
    for line in markdown.splitlines(keepends=True):
        fence = _FENCE.match(line)
        if fenced is None and fence:
            out.append(_edit_prose("".join(prose), edit))
            prose, fenced = [], fence.group(1)
            out.append(line)
        elif fenced is not None:
            out.append(line)
            if fence and fence.group(1) == fenced:
                fenced = None
        else:
            prose.append(line)
    out.append(_edit_prose("".join(prose), edit))
    return "".join(out)


def _edit_prose(text: str, edit) -> str:
    pieces, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        pieces += [edit(text[last:span.start()]), span.group(0)]
        last = span.end()
    return "".join([*pieces, edit(text[last:])])


class _LinkRewriter:
    """One page's links, from where the file is in the repository to where the page is in the site."""

    def __init__(self, root: Path, docs: Path, source: Path, page_uri: str, repo_url: str | None):
        self.root, self.docs, self.source, self.repo_url = root, docs, source, repo_url
        self.page_dir = (docs / page_uri).parent
        self.pages_from_root = {(root / src).resolve(): page for page, src in FROM_ROOT.items()}

    def __call__(self, match: re.Match) -> str:
        target = match.group("target")
        path, _, anchor = target.partition("#")
        if not path or _SCHEME.match(path) or path.startswith("/"):
            return match.group(0)
        resolved = (self.source.parent / path).resolve()
        if not resolved.exists():
            return match.group(0)  # broken: the strict build names it
        if resolved in self.pages_from_root:
            resolved = self.docs / self.pages_from_root[resolved]
        if resolved.is_relative_to(self.docs):
            new = os.path.relpath(resolved, self.page_dir).replace(os.sep, "/")
        elif resolved.is_relative_to(self.root) and self.repo_url:
            new = f"{self.repo_url.rstrip('/')}/blob/HEAD/{PurePosixPath(resolved.relative_to(self.root))}"
        else:
            return match.group("text")
        new += f"#{anchor}" if anchor else ""
        return f"{match.group(1)}{new}{match.group('title') or ''})"
