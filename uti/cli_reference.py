"""The `uti` command reference as Markdown, rendered from the argparse parsers themselves.

The docs site builds its CLI page from this (docs/hooks/cli_reference.py) instead of keeping a copy, so
the page cannot drift from what `uti CMD --help` accepts; tests/test_docs.py uses `commands()` to check
that every command and flag the docs name exists.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One parser of the `uti` tree: `path` is ("uti",) for the root, ("uti", "tokenspace", "show") below."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str

    @property
    def name(self) -> str:
        return " ".join(self.path)


def subparsers_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("uti",), help: str = "") -> list[Command]:
    """Every parser of the tree, depth first, parents before their subcommands."""
    found = [Command(path, parser, help)]
    action = subparsers_action(parser)
    if action is None:
        return found
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    for name, child in action.choices.items():
        if child.prog.split()[-1] == name:  # an alias shares its parser: list it once, under its own name
            found += commands(child, (*path, name), helps.get(name, ""))
    return found


def _unwrap(text: str) -> str:
    """Undo `add_command`'s wrap at the terminal width: a line continues the one before unless it
    starts a list item, which is the only line break our descriptions mean."""
    lines: list[str] = []
    for line in text.splitlines():
        item = line.lstrip().startswith(("* ", "- "))
        if lines and line.strip() and not item and lines[-1].strip():
            lines[-1] += " " + line.strip()
            continue
        if item and lines and lines[-1].strip() and not lines[-1].startswith(("* ", "- ")):
            lines.append("")  # Markdown starts a list only after a blank line
        lines.append(line.strip())
    body = "\n".join(lines)
    return body.replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help as `--help` prints it, %(default)s and %(choices)s filled in, before our HelpFormatter
    appends the default (this page shows the default in its own column)."""
    if not action.help:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = parser.prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return action.help % params


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    value = action.default
    if (not action.option_strings or value is None or value is False or value is argparse.SUPPRESS
            or isinstance(value, (str, list, tuple)) and not value or isinstance(action, argparse._HelpAction)):
        return ""
    return f"`{value}`"


def _signature(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The argument as the usage line writes it: `--mode {audio,image,text}`, `--data OUT`, `MANIFEST`."""
    formatter = parser._get_formatter()
    if not action.option_strings:
        return formatter._format_args(action, action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    values = formatter._format_args(action, action.dest.upper())
    return ", ".join(f"{s} {values}" for s in action.option_strings)


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [a for a in parser._actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)]
    if not rows:
        return []
    table = ["| argument | meaning | default |", "| --- | --- | --- |"]
    table += [f"| `{_signature(parser, a)}` | {_cell(_help_text(parser, a))} | {_default(a)} |" for a in rows]
    return [*table, ""]


def _subcommand_list(command: Command) -> list[str]:
    below = [c for c in commands(command.parser, command.path) if len(c.path) == len(command.path) + 1]
    if not below:
        return []
    action = subparsers_action(command.parser)
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    items = [f"- [`{c.name}`](#{'-'.join(c.path)}): {_cell(helps.get(c.path[-1], ''))}" for c in below]
    return ["Commands:", "", *items, ""]


def _section(command: Command) -> list[str]:
    parser = command.parser
    level = "#" * min(len(command.path) + 1, 6)
    out = [f"{level} {command.name}", ""]
    if parser.description or command.help:
        out += [_unwrap(parser.description or command.help), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    out += _subcommand_list(command)
    out += _options_table(parser)
    if parser.epilog:
        out += ["```text", parser.epilog.strip(), "```", ""]
    return out


def render_cli_reference(parser: argparse.ArgumentParser) -> str:
    """A Markdown page: one section per command (nested ones below their parent), each with its
    description, usage, subcommands, every argument with its help and default, and its example."""
    lines = ["# Command line reference", "",
             "Generated from the `uti` argument parsers when the site is built: what `uti COMMAND --help` "
             "prints, for every command.", ""]
    for command in commands(parser):
        lines += _section(command)
    return "\n".join(lines).rstrip() + "\n"
