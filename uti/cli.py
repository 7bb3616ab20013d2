"""`uti` command line: a thin layer that discovers subcommands and turns our errors into one clear line.

Subcommands register through the `uti.commands` entry-point group (see pyproject.toml), so this
bottom package never imports the packages built on top of it, and plugins can add commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Callable

from uti import __version__
from uti.errors import UTIError


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    example: str,
    func: Callable[[argparse.Namespace], int],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with a runnable example."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uti",
        description="Unified Tokenizer Interface: tokenize audio, image and text datasets into one token space, "
        "verify them, and train a token LM on them.",
        epilog="example:\n  uti demo --out demo-out",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"uti {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug logs)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for ep in sorted(entry_points(group="uti.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UTIError as exc:
        if args.debug:
            raise
        print(f"uti {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"uti {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        if args.debug:
            raise
        print(f"uti {args.command}: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
