"""Makes a local Ray instance's processes die with the driver that started it, however the driver dies.

Ray (2.60, Linux) ties the processes `ray.init` starts itself (gcs_server, raylet, the dashboard) to the
driver with a parent-death signal, and the workers exit when their raylet goes. The raylet's own children,
DashboardAgent and RuntimeEnvAgent, notice their raylet's death at once but then try to report it to the
GCS, which died with it, and wait for its reconnect timeouts: after `kill -9` of a driver both stayed for
about 3 minutes (210 MB). Nothing can give them a parent-death signal from outside (they are the raylet's
children, and prctl acts on the calling process only).

So `start` (called by uti.ray_local.connect after it started a local instance) runs this file as a small
process of its own: no Ray, no uti, only the standard library and the psutil Ray ships. It is the driver's
child, in a session of its own (Ctrl-C or a signal to the driver's process group does not reach it), and
reads a pipe only the driver holds. Once a second it notes the descendants of the instance's processes
(with their start times, so a reused pid is never taken for one). When the pipe closes or its parent
changes (the driver is gone), it kills every noted process that is still running, those processes'
descendants, and the Ray processes of this instance's session started since its last look (see
`_of_this_session`), and exits. When the instance's own processes are all gone while the driver lives
(`ray.shutdown`), it stops whatever of the instance is left the same way and exits. Only processes of this
instance are ever signalled (descended from its gcs_server, raylet and dashboard, or Ray's of its session
folder, which is unique to it): other Ray instances on the machine are never touched.
"""

from __future__ import annotations

import os
import select
import sys

POLL_S = 1.0  # how often the instance's process tree is noted (one pass over the process table)
GONE_WAIT_S = 3.0  # how long a killed process is given to disappear before the watchdog exits anyway


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(procs: dict, ppid_of: dict[int, int]) -> dict:
    """`procs` (pid -> psutil.Process) and every process below one of them in `ppid_of` (pid -> parent)."""
    import psutil

    children: dict[int, list[int]] = {}
    for pid, ppid in ppid_of.items():
        children.setdefault(ppid, []).append(pid)
    found = dict(procs)
    todo = [pid for pid, proc in procs.items() if _running(proc)]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                try:
                    found[child] = psutil.Process(child)
                except psutil.Error:
                    continue
                todo.append(child)
    return found


def _ppid_map() -> dict[int, int]:
    import psutil

    fast = getattr(psutil, "_ppid_map", None)  # what Process.children uses: ~2.7 ms for 100 processes, not 6.6
    if callable(fast):
        try:
            return dict(fast())
        except Exception:  # noqa: BLE001 - the public way below
            pass
    out = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid is not None:
            out[proc.pid] = ppid
    return out


def _of_this_session(proc, session_dir: str) -> bool:
    """A Ray process of this instance that the last look did not see (one started since): Ray's command
    line names the session, or a `ray::` process (a worker's or agent's title) holds a file of the session
    open (its logs). A program that merely reads the logs (`tail -f`) has neither."""
    import psutil

    name = os.path.basename(session_dir)
    ours = {f"--session-dir={session_dir}", f"--session_dir={session_dir}", f"--session-name={name}"}
    try:
        cmdline = proc.cmdline()
        if ours.intersection(cmdline):
            return True
        if cmdline and cmdline[0].startswith("ray::"):
            return any(f.path.startswith(session_dir + os.sep) for f in proc.open_files())
    except psutil.Error:
        pass
    return False


def _kill_all(procs: dict, session_dir: str) -> None:
    import psutil

    procs = _descendants(procs, _ppid_map())
    uid = os.getuid()
    for proc in psutil.process_iter():
        try:
            if proc.pid not in procs and proc.pid != os.getpid() and proc.uids().real == uid \
                    and _of_this_session(proc, session_dir):
                procs[proc.pid] = proc
        except psutil.Error:
            continue
    living = [proc for proc in procs.values() if _running(proc)]
    for proc in living:
        try:
            proc.kill()  # psutil refuses a pid that now belongs to another process
        except psutil.Error:
            pass
    psutil.wait_procs(living, timeout=GONE_WAIT_S)


def watch(driver_pid: int, session_dir: str, root_pids: list[int], pipe_fd: int = 0) -> None:
    import psutil

    roots = {}
    for pid in root_pids:
        try:
            roots[pid] = psutil.Process(pid)
        except psutil.Error:
            continue
    known = dict(roots)
    while True:
        known = {pid: proc for pid, proc in _descendants(known, _ppid_map()).items() if _running(proc)}
        readable, _, _ = select.select([pipe_fd], [], [], POLL_S)
        driver_gone = bool(readable) and not os.read(pipe_fd, 4096)  # EOF: the driver's end is closed
        if driver_gone or os.getppid() != driver_pid or not any(_running(proc) for proc in roots.values()):
            _kill_all(known, session_dir)
            return


def start(node) -> "subprocess.Popen | None":
    """Start the watchdog for the local instance `node` (Ray's Node of this driver, head=True) just started;
    None where it cannot run (not POSIX, or a Ray whose Node no longer lists its processes)."""
    import subprocess
    import threading

    import psutil  # Ray's copy once ray is imported (it puts its thirdparty_files on sys.path)

    infos = getattr(node, "all_processes", None)
    if os.name != "posix" or not isinstance(infos, dict):
        return None
    pids = [str(info.process.pid) for group in infos.values() for info in group
            if getattr(info, "process", None) is not None]
    if not pids:
        return None
    err_path = os.path.join(node.get_logs_dir_path(), "uti_watchdog.err")  # a crash is told there, not on the console
    try:
        with open(err_path, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__),
                 os.path.dirname(os.path.dirname(psutil.__file__)), str(os.getpid()), node.get_session_dir_path(),
                 *pids],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    except OSError as exc:
        import logging

        logging.getLogger(__name__).warning(
            "cannot start the watchdog of the local Ray instance (%s): should this process be killed with SIGKILL, "
            "Ray's DashboardAgent and RuntimeEnvAgent would stay for minutes", exc)
        return None
    # The pipe's write end stays open as long as `proc` lives: the reaping thread holds it until the watchdog
    # exits (after ray.shutdown, or with the driver).
    threading.Thread(target=proc.wait, name="uti-ray-watchdog", daemon=True).start()
    return proc


def main(argv: list[str]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; the instance follows it
    psutil_dir, driver_pid, session_dir, *roots = argv
    sys.path.insert(0, psutil_dir)
    watch(int(driver_pid), session_dir, [int(pid) for pid in roots])


if __name__ == "__main__":
    main(sys.argv[1:])
