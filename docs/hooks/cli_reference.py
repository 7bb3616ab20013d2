"""MkDocs hook: the `cli.md` page, rendered from `uti.cli.build_parser()` at every build.

The page is never committed, so it cannot disagree with what `uti COMMAND --help` accepts.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files

from uti.cli import build_parser
from uti.cli_reference import render_cli_reference

PAGE = "cli.md"


def on_files(files: Files, config, **kwargs) -> Files:
    files.append(File.generated(config, PAGE, content=render_cli_reference(build_parser())))
    return files
