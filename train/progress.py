"""The driver-side progress of `uti train` (uti.progress: a bar on a terminal, else a line every
`--progress-every` seconds): rank 0 appends a line per step to RUN/metrics.jsonl, so the driver follows
that file from a thread while `TorchTrainer.fit()` blocks, with no extra channel between workers and
driver. The same code follows a Ray Train run and a --num-workers 0 run in this process."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Iterator

from uti.progress import DEFAULT_EVERY, Progress


@contextlib.contextmanager
def follow_metrics(path: Path, *, start_step: int, last_step: int, interval: float = 0.5,
                   every: float = DEFAULT_EVERY) -> Iterator[None]:
    progress = Progress("train", unit="step", total=last_step, initial=start_step, every=every)
    progress.note("the workers' first step")
    stop = threading.Event()
    lock = threading.Lock()  # the bar is closed by the caller's thread once the poller has stopped

    def poll() -> None:
        offset, step = 0, start_step
        while not stop.wait(min(interval, max(every, 0.05))):
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = b""
            complete = chunk[: chunk.rfind(b"\n") + 1]  # never parse a half-written line
            offset += len(complete)
            with lock:
                for line in complete.splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if row.get("step", 0) > step:
                        step = row["step"]
                        progress.update(step, [f"loss {row.get('loss', float('nan')):.3f}",
                                               f"{row.get('tokens_per_s', 0):,.0f} tokens/s"])
                progress.tick()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        with lock:
            progress.close()
