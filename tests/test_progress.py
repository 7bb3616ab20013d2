"""uti.progress, the console progress of tokenize, verify and train: a bar on a terminal; elsewhere (ray job
submit, nohup, CI) a plain line every --progress-every seconds, with done/total, the job's figures, the ETA
and what the job waits for. The jobs' own lines are tested with each job (test_tokenize_chunks, test_verify,
test_train_new_user)."""

from __future__ import annotations

import io
import os
import sys

import pytest

from uti.errors import ConfigError
from uti.progress import Progress, check_every, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_n_seconds_with_the_rate_since_the_first_progress_and_the_wait():
    clock, out = Clock(), io.StringIO()
    p = Progress("tokenize", unit="sample", done_word="encoded", every=10, stream=out, clock=clock)
    p.note("2 codec actors loading (3 s)")
    clock.now += 9.9
    p.tick()
    assert out.getvalue() == ""  # not due yet
    clock.now += 0.2
    p.tick()
    assert out.getvalue() == "uti tokenize: starting, 10s elapsed; waiting: 2 codec actors loading (3 s)\n"
    p.start(3000)
    p.note("the first chunks to encode")
    clock.now += 30  # start-up: not the job's pace
    p.update(300, ["0.10 h audio", "shards 0/3 committed"])
    clock.now += 20  # 300 more in 20 s: 15/s, 2400 left
    p.update(600, ["0.20 h audio", "shards 0/3 committed"])
    p.update(700, ["0.25 h audio", "shards 0/3 committed"])  # within 10 s of the last line: none
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        "uti tokenize: 300/3,000 samples encoded (10%), 0.10 h audio, shards 0/3 committed, ETA 4m30s, 40s elapsed",
        "uti tokenize: 600/3,000 samples encoded (20%), 0.20 h audio, shards 0/3 committed, ETA 2m40s, 1m00s elapsed",
    ], lines
    p.say("resuming: 1 of 4 shards complete (1,000 samples), 3 to do (3,000 samples)")
    assert out.getvalue().endswith("uti tokenize: resuming: 1 of 4 shards complete (1,000 samples), 3 to do "
                                   "(3,000 samples)\n")


def test_disabled_or_every_zero_prints_no_lines_but_messages_still_go_out():
    for kw in ({"enabled": False}, {"every": 0}):
        clock, out = Clock(), io.StringIO()
        p = Progress("verify", unit="shard", total=4, stream=out, clock=clock, **kw)
        clock.now += 1000
        p.update(2)
        p.tick()
        p.say("hello")
        assert out.getvalue() == "uti verify: hello\n", kw


def test_a_terminal_gets_the_bar_and_no_lines():
    import fcntl
    import select
    import struct
    import termios
    import time

    if not hasattr(os, "openpty"):
        pytest.skip("no pseudo-terminals here")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a window tqdm can draw in
    with os.fdopen(slave, "w") as terminal:
        p = Progress("train", unit="step", total=50, initial=10, every=1e-6, stream=terminal)
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        p.update(30, ["loss 3.990"])
        p.close()
        terminal.flush()
    shown = ""
    while select.select([master], [], [], 0.5)[0]:  # a pseudo-terminal hands its output over in pieces
        try:
            piece = os.read(master, 65536)
        except OSError:  # the terminal's other end is closed and drained
            break
        if not piece:
            break
        shown += piece.decode(errors="replace")
    os.close(master)
    assert "30/50" in shown and "loss 3.990" in shown and "train:" in shown, shown
    assert "uti train:" not in shown, shown  # no plain line on a terminal


def test_durations_and_a_bad_interval():
    assert [duration(s) for s in (0.4, 12, 185, 7620)] == ["0s", "12s", "3m05s", "2h07m"]
    assert check_every(0.5) == 0.5
    with pytest.raises(ConfigError, match="--progress-every must be >= 0"):
        check_every(-1)
    with pytest.raises(ConfigError, match="--progress-every"):
        check_every(float("nan"))


def test_the_flag_is_on_every_long_command_with_its_default(capsys):
    from uti.cli import main

    for command in ("tokenize", "verify", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--progress-every SECONDS seconds between two plain progress lines when stderr is not a terminal" in text
        assert "(default: 15.0)" in text.split("--progress-every SECONDS", 2)[-1].split("--", 1)[0], command
    assert sys.stderr is not None
