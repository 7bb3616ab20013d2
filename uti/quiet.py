"""Third-party console output that uti keeps out of its users' terminals: the one owner of how it is quieted.

uti prints its own progress and summaries. Libraries it drives print theirs as well:
* Ray Train's local mode logs at INFO that it runs, and every reported metrics dict in full
  (`train.runner.quiet_local_mode` names those loggers, `quieter_loggers` lowers them), and Ray repeats
  notices while uti.ray_local resolves an address (lowered the same way);
* transformers prints a tqdm bar for every model it loads ("Loading weights: 100%|...| 110/110"), and
  diffusers and huggingface_hub do the same for pipelines and files. Each codec actor loads its codec, so a
  tokenize job printed one bar per actor (on the console wherever Ray forwards actors' output, in the
  actor's log otherwise), and one more in the driver. `no_loading_bars` turns them off around every model load uti makes (codecs, text
  tokenizers, `uti train --model FOLDER`), in whichever process loads: nothing needs to reach the actors'
  environment.

Both are scoped: each library's setting is restored afterwards, so a program that uses uti as a library keeps its
own settings. HF_HUB_DISABLE_PROGRESS_BARS=0 in the environment (huggingface_hub's switch, which it gives
priority) keeps the bars on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterable, Iterator

_lock = threading.Lock()
_depth = 0  # open no_loading_bars blocks, over all threads: the outermost one's exit turns the bars back on
_before: dict[str, bool] = {}  # library -> whether its bars were on, for each library turned off so far


@contextlib.contextmanager
def quieter_loggers(names: Iterable[str], level: int = logging.WARNING) -> Iterator[None]:
    """While open: the named loggers say `level` and above only; their levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _user_wants_bars() -> bool:
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().upper() in ("0", "FALSE", "NO", "OFF")


def _turn_bars_off() -> None:
    """Turn off the bars of each library this process has imported and that is not off yet (importing the
    others here would cost seconds: callers import what they load with first), noting how it was."""
    if "huggingface_hub" in sys.modules and "huggingface_hub" not in _before:
        from huggingface_hub import utils as hub

        _before["huggingface_hub"] = not hub.are_progress_bars_disabled()
        hub.disable_progress_bars()
    if "transformers" in sys.modules and "transformers" not in _before:
        from transformers.utils import logging as tf_logging

        _before["transformers"] = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    if "diffusers" in sys.modules and "diffusers" not in _before:
        from diffusers.utils import logging as df_logging

        _before["diffusers"] = df_logging.is_progress_bar_enabled()
        df_logging.disable_progress_bar()


def _restore_bars() -> None:
    if _before.get("transformers"):
        from transformers.utils import logging as tf_logging

        tf_logging.enable_progress_bar()  # this turns huggingface_hub's on too: set right below
    if "huggingface_hub" in _before:
        from huggingface_hub import utils as hub

        (hub.enable_progress_bars if _before["huggingface_hub"] else hub.disable_progress_bars)()
    if _before.get("diffusers"):
        from diffusers.utils import logging as df_logging

        df_logging.enable_progress_bar()
    _before.clear()


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """While open (in any thread): no tqdm bars from transformers, diffusers or huggingface_hub. Open it
    around a from_pretrained call, after importing the library that loads."""
    global _depth
    if _user_wants_bars():
        yield
        return
    with _lock:
        _depth += 1
        _turn_bars_off()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _restore_bars()
