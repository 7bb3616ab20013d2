"""`uti` command line: a thin layer that discovers subcommands and turns our errors into one clear line.

Subcommands register through the `uti.commands` entry-point group (see pyproject.toml), so this
bottom package never imports the packages built on top of it, and plugins can add commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import textwrap
import threading
from importlib.machinery import all_suffixes
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from uti import __version__
from uti.doctor import POINTER, is_environment_failure, one_line
from uti.errors import UTIError
from uti.path_errors import explain
from uti.ray_local import stop_on_sigterm_like_ctrl_c


# The top-level packages of this distribution (pyproject.toml, [tool.setuptools.packages.find]).
OUR_PACKAGES = ("uti", "sharding", "ray_jobs", "verify", "train", "demo", "bench")


def _shadows_ours(entry: str, *, cwd: Path, home: Path) -> bool:
    """True when import-path `entry` is the working directory and holds a module or folder named like
    one of our packages (a folder counts: with an editable install it becomes a namespace package
    that wins over ours)."""
    try:
        folder = Path(entry or os.curdir).resolve()
    except OSError:
        return False
    if folder != cwd or folder == home:
        return False
    return any((folder / name).is_dir() or any((folder / f"{name}{suffix}").is_file() for suffix in all_suffixes())
               for name in OUR_PACKAGES)


def drop_working_directory_from_imports() -> None:
    """Keep a `verify.py`, `sharding.py` or `train/` in the user's folder from replacing our packages.

    `python -m uti.cli`, `PYTHONPATH=.` or an empty PYTHONPATH entry put the working directory on the
    import path ahead of the installed packages (an editable install's finder comes after every
    sys.path entry). It is removed from sys.path before any subcommand module is imported, and from
    PYTHONPATH, which the processes of a local Ray instance inherit. It stays when it is where our
    packages are installed (an editable install run from the repository root). The Ray workers' own
    path is handled in uti.ray_local. A `uti.py` there cannot be helped: it replaces `uti` before
    this code runs.
    """
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was deleted: nothing there to shadow anything
        return
    home = Path(__file__).resolve().parent.parent  # the folder holding uti/ and its sibling packages
    sys.path[:] = [e for e in sys.path if not _shadows_ours(e, cwd=cwd, home=home)]
    if "PYTHONPATH" in os.environ:
        kept = [e for e in os.environ["PYTHONPATH"].split(os.pathsep) if not _shadows_ours(e, cwd=cwd, home=home)]
        if kept:
            os.environ["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del os.environ["PYTHONPATH"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks; every option shows its default (unless it is
    None, False or empty, or its help already says it), so `uti CMD --help` tells what a run uses."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (str, list, tuple)) and not default) or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with our HelpFormatter; subparsers inherit the class, so every `uti` command gets it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


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
    # The formatter keeps line breaks (for examples), so a long description is wrapped here, to the
    # width argparse gives the options.
    width = max(40, shutil.get_terminal_size().columns - 2)
    text = "\n".join(textwrap.fill(line, width) for line in (description or help).split("\n"))
    parser = sub.add_parser(
        name,
        help=help,
        description=text,
        epilog=f"example:\n  {example}",
    )
    parser.set_defaults(func=func)
    return parser


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """`--config`: a built-in preset (every uti/presets/*.yaml, listed in the help) or a uti.yaml path."""
    from uti.config import preset_names

    presets = ", ".join(preset_names())
    parser.add_argument("--config", default=None, metavar="PRESET|FILE",
                        help=f"codec config: a built-in preset (one of: {presets}) or a uti.yaml path "
                             "(default: the 'default' preset)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="uti",
        description="Unified Tokenizer Interface: tokenize audio, image and text datasets into one token space, "
        "verify them, and train a token LM on them.",
        epilog="example:\n  uti demo --out demo-out",
    )
    parser.add_argument("--version", action="version", version=f"uti {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug logs)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for ep in sorted(entry_points(group="uti.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except Exception as exc:  # noqa: BLE001 - a command whose module does not import stays listed, and says why
            if not is_environment_failure(exc):
                raise
            _add_broken_command(sub, ep.name, ep.value, exc)
            continue
        register(sub)
    return parser


def _add_broken_command(sub: argparse._SubParsersAction, name: str, target: str, exc: BaseException) -> None:
    """`uti NAME ...` for a command whose module failed to import: it takes any arguments and prints one
    line naming the failure and `uti doctor`, where a traceback would have been."""
    reason = f"cannot load this command ({target}): {one_line(exc)}; {POINTER}"
    p = sub.add_parser(name, help=f"(unavailable here: {one_line(exc)[:80]})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=lambda args: _refuse(name, reason))


def _refuse(command: str, reason: str) -> int:
    print(f"uti {command}: error: {reason}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 a check failed (verify, audit), 2 an error, 130 Ctrl-C, 143 SIGTERM.
    Both signals stop a command the same clean way; a subcommand may name what to do next with
    `parser.set_defaults(on_interrupt="...")`."""
    drop_working_directory_from_imports()  # before build_parser imports the subcommand modules
    previous = signal.getsignal(signal.SIGTERM)
    stop_on_sigterm_like_ctrl_c()
    try:
        return _run(argv)
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)  # main() called in-process (tests) leaves no trace


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UTIError as exc:
        if args.debug:
            raise
        signum = getattr(exc, "signum", None)  # a library's own "interrupted" error (e.g. training in uti demo)
        if isinstance(signum, int):
            print(f"uti {args.command}: {exc}", file=sys.stderr)
            return 128 + signum
        print(f"uti {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (uti.ray_local.Terminated)
        hint = getattr(args, "on_interrupt", None)
        print(f"uti {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except (ImportError, OSError) as exc:
        if args.debug:
            raise
        if is_environment_failure(exc) and not isinstance(exc, _PATH_ERRORS):
            # A package that is missing or whose compiled library does not load is the installation's
            # fault: one line and the pointer to `uti doctor`, never a traceback.
            return _refuse(args.command, f"{one_line(exc)}; {POINTER}")
        if isinstance(exc, ImportError) or (exc.filename is None and not isinstance(exc, _PATH_ERRORS)):
            raise  # not about a path or the installation: a bug to show
        # The OS refused a path (a UTIError that is also an OSError was handled above).
        flag, given = _path_argument(parser, args, exc.filename) or (None, None)
        print(f"uti {args.command}: error: {explain(exc, flag=flag, given=given)}", file=sys.stderr)
        return 2


_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def _path_argument(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   filename: str | os.PathLike | None) -> tuple[str, str] | None:
    """(how the user named it, the value given) for the argument of this command that `filename` is, or
    lies under (the most specific one): `--out`, or the metavar of a positional such as OUT."""
    if filename is None:
        return None
    target = os.path.abspath(os.fspath(filename))
    best: tuple[int, str, str] | None = None
    for action in _chosen_actions(parser, args):
        values = getattr(args, action.dest, None)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value) or "://" in os.fspath(value):
                continue
            root = os.path.abspath(os.fspath(value))
            if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
                name = (next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
                        if action.option_strings else str(action.metavar or action.dest.upper()))
                if best is None or len(root) > best[0]:
                    best = (len(root), name, os.fspath(value))
    return None if best is None else (best[1], best[2])


def _chosen_actions(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The arguments of the command that ran: the root's, then each chosen subcommand's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                yield from _chosen_actions(chosen, args)
        else:
            yield action


if __name__ == "__main__":
    sys.exit(main())
