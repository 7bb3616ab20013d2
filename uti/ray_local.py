"""Starting or joining Ray, shared by every job (tokenize, verify, train).

Local instances bind to 127.0.0.1 and run without the dashboard unless asked. Ray 2.60 turns
"127.0.0.1" given as `_node_ip_address` into the machine's routable IP and then listens on every
interface; its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS and
Windows) instead uses the loopback address as the node IP, and every server binds to it. The flag is
read at import time, so both the environment (for the processes Ray starts) and the imported constant
are set around `ray.init`, then restored.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from uti.errors import UTIError


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    import ray._private.ray_constants as rc

    env_name = rc.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_flag = os.environ.get(env_name), rc.ENABLE_RAY_CLUSTER
    os.environ[env_name] = "0"
    rc.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        rc.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(env_name, None)
        else:
            os.environ[env_name] = old_env


def connect(address: str | None, *, num_cpus: int | None = None, dashboard: bool = False,
            runtime_env: dict[str, Any] | None = None) -> bool:
    """Make sure Ray is initialised; returns True when this call started it (the caller shuts it down).

    An already initialised Ray (a test fixture, a notebook, the driver of a RayJob) is reused as is.
    `address` None starts a private local instance: address="local" never follows a stray RAY_ADDRESS
    to somebody's cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Token auth stays on; only its every-start notice is kept out of the user's terminal.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if runtime_env:
        common["runtime_env"] = runtime_env
    try:
        if address:
            ray.init(address=address, **common)
        else:
            with loopback_only():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                         dashboard_host="127.0.0.1", **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UTIError(f"cannot start or reach {where}: {exc}") from None
    return True


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
