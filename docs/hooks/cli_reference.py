"""MkDocs hook: the `cli.md` page, rendered from `uti.cli.build_parser()` at every build.

The page is never committed, so it cannot disagree with what `uti COMMAND --help` accepts. The
checkout that holds this mkdocs.yml is imported ahead of any installed uti, so the page documents the
code beside it; the commands themselves are found through the installed `uti.commands` entry points.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from uti.cli import build_parser  # noqa: E402
from uti.cli_reference import render_cli_reference  # noqa: E402

PAGE = "cli.md"


def on_files(files: Files, config, **kwargs) -> Files:
    if files.get_file_from_path(PAGE) is not None:
        raise PluginError(f"docs/{PAGE} is generated from the argparse parsers at build time "
                          f"(docs/hooks/cli_reference.py): delete the committed copy")
    files.append(File.generated(config, PAGE, content=render_cli_reference(build_parser())))
    return files
