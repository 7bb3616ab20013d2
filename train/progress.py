"""A driver-side progress bar for `uti train`: rank 0 appends a line per step to RUN/metrics.jsonl, so
the driver follows that file from a thread while `TorchTrainer.fit()` blocks, with no extra channel
between workers and driver."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def follow_metrics(path: Path, *, start_step: int, last_step: int, interval: float = 0.5) -> Iterator[None]:
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in logs and CI.
    bar = tqdm(total=last_step, initial=start_step, unit="step", desc="train", disable=None, dynamic_ncols=True)
    stop = threading.Event()

    def poll() -> None:
        offset, step = 0, start_step
        while not stop.wait(interval):
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except FileNotFoundError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # never parse a half-written line
            offset += len(complete)
            for line in complete.splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("step", 0) > step:
                    bar.update(row["step"] - step)
                    step = row["step"]
                    bar.set_postfix_str(f"loss {row.get('loss', float('nan')):.3f}", refresh=False)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        bar.close()
