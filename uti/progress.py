"""The console progress of a long job (`uti tokenize`, `uti verify`, `uti train`).

On a terminal it is a tqdm bar. When stderr is not a terminal (`ray job submit`, `nohup`, CI) a bar
prints nothing useful, so a plain line goes out every `--progress-every` seconds instead, as Ray Data
logs its progress: what is done of the total, the job's own figures, the ETA, and what the job is
waiting for while nothing moves. One format and one timer for the three commands, here.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence, TextIO

from uti.errors import ConfigError

DEFAULT_EVERY = 15.0  # seconds between two progress lines (--progress-every)
EVERY_HELP = ("seconds between two plain progress lines when stderr is not a terminal (ray job submit, nohup, CI; "
              "a terminal gets a progress bar); 0: none")


def check_every(value: float) -> float:
    """`value` if it is a usable interval (>= 0 seconds); else a ConfigError naming the flag."""
    if not value >= 0:
        raise ConfigError(f"--progress-every must be >= 0 seconds (0: no progress lines), got {value}")
    return float(value)


def add_progress_every_flag(parser: argparse.ArgumentParser) -> None:
    """`--progress-every SECONDS`, the same on every command that shows progress."""
    parser.add_argument("--progress-every", type=float, default=DEFAULT_EVERY, metavar="SECONDS", help=EVERY_HELP)


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress of `total` units (samples, shards, steps), `initial` of them done before this run.

    `update` sets how many are done and the job's own figures (already formatted: "0.21 h audio"),
    `note` what the job waits for (empty: nothing), `say` prints one message at once; `tick` prints a line
    when one is due (the job's loop calls it, so a line comes even while nothing moves). The total may come
    later (`start`): until then a line says only what the job waits for.
    """

    def __init__(self, command: str, *, unit: str, done_word: str = "", total: int | None = None, initial: int = 0,
                 every: float = DEFAULT_EVERY, enabled: bool = True, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.command = command
        self.unit = unit
        self.done_word = done_word  # "5/13 shards checked"
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        terminal = is_terminal(self.stream)
        self.bar_on = enabled and terminal
        self.lines_on = enabled and not terminal and every > 0
        self.every = every
        self.created = self.t0 = clock()  # elapsed counts from `created`, rates from `t0` (the total known)
        self.last_line = self.t0
        self.total: int | None = None
        self.initial = self.done = initial
        self.first: tuple[float, int] | None = None  # (time, done) at the first progress: the rate's anchor
        self.fields: tuple[str, ...] = ()
        self.waiting = ""
        self.bar = None
        if total is not None:
            self.start(total, initial=initial)

    # ---- what the job reports ----------------------------------------------------------------------------
    def start(self, total: int, *, initial: int = 0) -> None:
        """The total is known: the bar opens (on a terminal), lines show done/total from now on."""
        self.total, self.initial, self.done = total, initial, initial
        self.t0 = self.clock()
        if self.bar_on and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=self.unit, desc=self.command, dynamic_ncols=True,
                            file=self.stream)

    def update(self, done: int, fields: Sequence[str] = ()) -> None:
        if done > self.done and self.first is None:
            self.first = (self.clock(), done)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        self.done = done
        self.fields = tuple(fields)
        if done > self.initial:
            self.waiting = ""  # it moved: whatever it waited for is over
        self._postfix()
        self.tick()

    def note(self, text: str) -> None:
        """What the job waits for now ("" once it no longer waits)."""
        self.waiting = text
        self._postfix()
        self.tick()

    def say(self, text: str) -> None:
        """One message now (e.g. "resuming: ..."), above the bar on a terminal."""
        line = f"uti {self.command}: {text}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def tick(self) -> None:
        """Print a progress line if one is due (never on a terminal: the bar shows it)."""
        now = self.clock()
        if self.lines_on and now - self.last_line >= self.every:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ---- what it shows -----------------------------------------------------------------------------------
    def eta(self, now: float) -> float | None:
        """Seconds left at the rate since the first progress (start-up before it is not the job's pace)."""
        if self.total is None or self.done <= self.initial:
            return None
        t, d = self.first if self.first is not None and self.done > self.first[1] and now > self.first[0] \
            else (self.t0, self.initial)
        rate = (self.done - d) / max(now - t, 1e-9)
        return max(0, self.total - self.done) / rate if rate > 0 else None

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        if self.total is None:
            parts = ["starting"]
        else:
            share = f" ({self.done / self.total:.0%})" if self.total else ""
            counted = f"{self.done:,}/{self.total:,} {self.unit}s" + (f" {self.done_word}" if self.done_word else "")
            parts = [counted + share, *self.fields]
            eta = self.eta(now)
            parts.append(f"ETA {duration(eta)}" if eta is not None else "ETA unknown")
        parts.append(f"{duration(now - self.created)} elapsed")
        text = ", ".join(parts)
        return f"uti {self.command}: {text}" + (f"; waiting: {self.waiting}" if self.waiting else "")

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.waiting or ", ".join(self.fields), refresh=True)
