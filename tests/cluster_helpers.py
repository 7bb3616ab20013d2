"""A real Ray cluster for the tests, started the way users start one: `ray start --head` (and a worker node
with `ray start --address`), bound to 127.0.0.1, with the job server, in a private temp dir.

Teardown stops exactly the processes this cluster started: each `ray start --block` runs in its own
session (process group), and every process Ray launches for that node stays in it. `ray stop` would also
kill every other Ray instance on the machine (a test session's own local instances, a developer's cluster),
so it is only the fallback for a process that escaped its group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    # The `ray` console script of this interpreter's environment, not whatever is first on PATH.
    return [sys.executable, "-m", "ray.scripts.scripts"]


def cluster_env(temp_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's single-machine mode: every server binds to the loopback address given as the node IP
    # (otherwise Ray 2.60 swaps 127.0.0.1 for the routable IP and listens on all interfaces).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_TMPDIR"] = str(temp_dir)
    # `ray start` turns token authentication on; clients (the job CLI, a driver joining with --address)
    # send the token it wrote to ~/.ray/auth_token only when told the cluster uses tokens.
    env["RAY_AUTH_MODE"] = "token"
    return env


@dataclass
class RayStartCluster:
    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        return cluster_env(self.temp_dir)

    def _spawn(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(_ray_cli() + ["start", "--block", "--disable-usage-stats", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env or self.env, start_new_session=True,
                                cwd=self.temp_dir)
        self.procs.append(proc)
        return proc

    def start_head(self, *, num_cpus: int) -> None:
        self._spawn("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port",
                             str(free_port()), "--num-cpus", str(num_cpus), "--temp-dir", str(self.temp_dir),
                             # The job agent's HTTP port defaults to 52365 on every node: any other Ray on
                             # this machine (the suite's local instance, a user's) holding it leaves the job
                             # server with "No available agent to submit job" forever.
                             "--dashboard-agent-listen-port", str(free_port()),
                             "--dashboard-agent-grpc-port", str(free_port())])
        self._wait(lambda: self.alive_cpus() >= num_cpus, what=f"the head node ({num_cpus} CPUs) and its job server")

    def add_worker(self, *, num_cpus: int) -> None:
        before = self.alive_cpus()
        # Ray's single-machine mode refuses to join a node; the worker joins in cluster mode, still
        # announcing the loopback address as its node IP.
        env = dict(self.env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
        self._spawn(f"worker{len(self.procs)}", ["--address", self.gcs_address, "--node-ip-address", "127.0.0.1",
                                                  "--num-cpus", str(num_cpus)], env=env)
        self._wait(lambda: self.alive_cpus() >= before + num_cpus, what=f"a worker node with {num_cpus} CPUs")

    def alive_cpus(self) -> float:
        """CPUs of the live nodes as the job server reports them (0 while it is not up yet)."""
        request = urllib.request.Request(f"{self.dashboard_url}/nodes?view=summary", headers=_auth_headers())
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                data = json.load(resp)
        except OSError:
            return 0.0
        nodes = data.get("data", {}).get("summary", [])
        return sum(float(n.get("raylet", {}).get("resourcesTotal", {}).get("CPU", 0.0))
                   for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")

    def _wait(self, ready, *, what: str, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"`ray start` exited with {proc.returncode} while waiting for {what}; "
                                       f"see {self.log_dir}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}; logs in {self.log_dir}")

    def job(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job ...` against this cluster's job server, as a user types it.

        The job server answers before the node's job agent has registered ("No available agent to submit
        job, please try again later"); like a user, try again for a while. On a loaded machine the agent
        took more than 90 s to register, so wait up to 5 minutes.
        """
        env = self.env
        deadline = time.time() + 300
        while True:
            done = subprocess.run(_ray_cli() + ["job", *args], env=env, capture_output=True, text=True,
                                  timeout=timeout)
            if "No available agent" not in done.stderr + done.stdout or time.time() > deadline:
                return done
            time.sleep(2)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop_group(proc)
        self.procs.clear()


def _auth_headers() -> dict[str, str]:
    # Ray 2.60 token authentication: `ray start` writes the token where its own CLI reads it.
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _stop_group(proc: subprocess.Popen) -> None:
    # SIGTERM lets `ray start --block` begin stopping its node's processes in order; it then drains for up
    # to 30 s even with nothing running (the suite waited the whole grace, 10 s, every time), so after a
    # short grace the group is SIGKILLed: every process of the node is in it, and its temp dir is private.
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers still in the group once the leader is gone
    except ProcessLookupError:
        pass
