"""`uti ...` through the console script's own main() in this process.

The same argv, exit code, stdout and stderr as `uti` in a shell, without a fresh interpreter importing
torch and the codecs again (seconds per command on two cores). What only a new process shows (signals,
imports from the working directory, a command's own Ray, a clean environment) is still tested with one.
"""

from __future__ import annotations

import contextlib
import io
import subprocess


def uti_in_process(*args: str) -> subprocess.CompletedProcess:
    from uti.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own refusals and --help
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["uti", *args], code, out.getvalue(), err.getvalue())
