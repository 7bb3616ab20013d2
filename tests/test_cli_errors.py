"""A path the OS refuses is one line naming the flag, the path and what to do, for every command (uti.cli
turns the OSError into it through uti.path_errors), never the errno text alone ("Not a directory: ...")."""

from __future__ import annotations

import errno

import pytest

from cli_helpers import uti_in_process
from train_helpers import shared_dataset
from uti.path_errors import blocking_file, explain

RAW = ("Not a directory", "File exists", "Errno", "Traceback")


def _one_line(proc, command: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"uti {command}: error: "), proc.stderr
    assert not any(raw in lines[0] for raw in RAW), lines[0]
    return lines[0]


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "bad" / "afile"
    path.parent.mkdir()
    path.write_text("not a folder")
    return path


@pytest.fixture
def byte_config(tmp_path):
    path = tmp_path / "byte.yaml"
    path.write_text("text: {kind: byte}\n")  # no media codec to load: the command reaches --out at once
    return str(path)


def test_out_under_a_file(afile, byte_config):
    line = _one_line(uti_in_process("tokenspace", "build", "--config", byte_config, "--out", str(afile / "sub")),
                     "tokenspace")
    assert f"--out {afile / 'sub'}: {afile} is a file, not a folder" in line and "move the file away" in line


def test_out_that_is_a_file(afile, byte_config):
    line = _one_line(uti_in_process("tokenspace", "build", "--config", byte_config, "--out", str(afile)), "tokenspace")
    assert f"--out {afile}: {afile} is an existing file where a folder is needed" in line


def test_train_out_that_is_a_file(afile, tmp_path_factory, default_tokenizer):
    data = shared_dataset(tmp_path_factory, default_tokenizer)
    line = _one_line(uti_in_process("train", "--data", str(data), "--out", str(afile), "--num-workers", "0",
                                    "--steps", "1"), "train")
    assert f"--out {afile}: {afile} is an existing file where a folder is needed" in line


def test_verify_report_dir_under_a_file_names_the_flag_not_out(afile, tmp_path):
    from sharding.outdir import write_space
    from uti.token_space import TokenSpace

    # Refused before Ray starts; the nearest argument is named: the report folder, not the OUT that holds it.
    out = tmp_path / "ds"
    write_space(out, TokenSpace.build(text=_byte_descriptor(), image=None, audio=None))
    proc = uti_in_process("verify", str(out), "--report-dir", str(afile / "r"), "--num-cpus", "1",
                          "--decode-fraction", "0", "--retokenize-fraction", "0", "--loader-batches", "0")
    line = _one_line(proc, "verify")
    assert f"--report-dir {afile / 'r'}" in line and "is a file, not a folder" in line


def _byte_descriptor():
    from uti.config import load_config
    from uti.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer(load_config("default"), modalities=()).space.codecs["text"]


def test_verify_without_a_token_space_advises_once(tmp_path):
    line = _one_line(uti_in_process("verify", str(tmp_path)), "verify")
    assert line.count("--token-space") == 1 and line.count("OUT folder") == 1 and "restore" not in line
    assert str(tmp_path / "token_space.json") in line


def test_explain_names_the_path_and_a_fix_without_a_flag(tmp_path):
    missing = tmp_path / "nope" / "x.json"
    line = explain(FileNotFoundError(errno.ENOENT, "No such file or directory", str(missing)))
    assert line.startswith(f"{missing}: does not exist; check the path")
    line = explain(PermissionError(errno.EACCES, "Permission denied", str(tmp_path)), flag="--out", given=str(tmp_path))
    assert line.startswith(f"--out {tmp_path}: permission denied; choose a location")
    assert explain(OSError("no plan.json in OUT")) == "no plan.json in OUT"  # our own message, kept as it is
    assert blocking_file(tmp_path / "a" / "b") is None
