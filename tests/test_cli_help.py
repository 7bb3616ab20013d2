"""`uti CMD --help` for every command, found the way the CLI finds them (the `uti.commands` entry points,
through uti.cli.build_parser), nested ones such as `uti tokenspace build` included: every flag has help
text and shows its default, every command has a description and an example, `--config` lists the presets.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

import uti
from uti.cli import build_parser

from cli_helpers import uti_in_process


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("uti",)):
    """(path, parser) of the root and of every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _flags(parser: argparse.ArgumentParser):
    """The arguments a user types (flags and positionals): not -h/--version nor the subcommand choice."""
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        yield action


def _name(path: tuple[str, ...], action: argparse.Action) -> str:
    return f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"


def _shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line --help prints for `action`, defaults expanded (argparse's own formatter call)."""
    return parser._get_formatter()._expand_help(action)


def _has_default(value) -> bool:
    return not (value is None or value is False or value is argparse.SUPPRESS
                or (isinstance(value, (str, list, tuple)) and not value))


COMMANDS = list(_commands(build_parser()))


def test_the_walk_finds_every_registered_command_and_nested_ones():
    names = {" ".join(path) for path, _ in COMMANDS}
    from importlib.metadata import entry_points

    for ep in entry_points(group="uti.commands"):
        assert f"uti {ep.name}" in names
    assert {"uti tokenspace build", "uti tokenspace show", "uti tokenspace diff", "uti tokenspace codecs"} <= names


def test_every_flag_has_help_text_and_shows_its_default():
    missing_help, missing_default = [], []
    for path, parser in COMMANDS:
        for action in _flags(parser):
            if not action.help or action.help is argparse.SUPPRESS or not action.help.strip():
                missing_help.append(_name(path, action))
                continue
            if action.option_strings and _has_default(action.default):
                shown = _shown_help(parser, action)
                if "default" not in shown or str(action.default) not in shown:
                    missing_default.append(f"{_name(path, action)} (default {action.default!r}): {shown!r}")
    assert not missing_help, f"flags without help text: {missing_help}"
    assert not missing_default, f"flags whose help does not show their default: {missing_default}"


# Commands whose flags fill a config dataclass: a flag that is None in argparse (so that the config, or a
# resumed run, decides) must still say in its help what the config's default is.
def _config_classes():
    from demo.run import DemoConfig
    from ray_jobs.config import TokenizeConfig
    from train.config import TrainConfig
    from train.generate import GenerateConfig
    from verify.config import VerifyConfig

    return {"uti verify": VerifyConfig, "uti train": TrainConfig, "uti tokenize": TokenizeConfig,
            "uti generate": GenerateConfig, "uti demo": DemoConfig}


def test_flags_left_to_a_config_say_the_configs_default():
    classes = _config_classes()
    silent, checked = [], 0
    for path, parser in COMMANDS:
        cls = classes.get(" ".join(path))
        if cls is None:
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for action in _flags(parser):
            f = fields.get(action.dest)
            if f is None or action.default is not None or not action.option_strings:
                continue
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if not _has_default(default):
                continue
            checked += 1
            if "default" not in _shown_help(parser, action):
                silent.append(f"{_name(path, action)} (config default {default!r})")
    assert checked >= 10  # train's flags are all None in argparse (resume keeps the run's values)
    assert not silent, f"flags that do not say their config default: {silent}"


def test_every_command_has_a_description_and_an_example():
    lacking = [" ".join(path) for path, parser in COMMANDS[1:]
               if not (parser.description or "").strip() or "example:" not in (parser.epilog or "")]
    assert not lacking, f"commands without a description or an example: {lacking}"


def test_config_flags_list_every_builtin_preset():
    presets = sorted(p.stem for p in (Path(uti.__file__).parent / "presets").glob("*.yaml"))
    assert presets
    from uti.config import PRESETS, preset_names

    assert list(preset_names()) == presets == list(PRESETS)
    seen = []
    for path, parser in COMMANDS:
        for action in _flags(parser):
            if "--config" in action.option_strings:
                seen.append(" ".join(path))
                shown = _shown_help(parser, action)
                assert all(p in shown for p in presets), (path, shown)
                assert "preset" in shown
    assert {"uti tokenize", "uti audit", "uti tokenspace build"} <= set(seen)


@pytest.mark.parametrize("argv, expected", [
    (("verify", "--help"), ("--loader-batch-size B", "(default: 8)", "--max-examples N", "(default: 20)")),
    (("tokenspace", "diff", "--help"), ("example:", "the first token space", "compared against A")),
    (("generate", "--help"), ("what to generate", "sampling seed")),
    (("audit", "--help"), ("how the decode checks decode",)),
])
def test_help_as_printed(argv, expected):
    proc = uti_in_process(*argv)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for piece in expected:
        assert " ".join(piece.split()) in text, (piece, proc.stdout)
