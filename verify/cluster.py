"""Ray setup for verify: join a cluster at `--address`, or start a private local instance.

(`ray_jobs` has its own twin of this for tokenize; verify must not import it. Move both down into a
shared package if a third user appears.)
"""

from __future__ import annotations

import logging
import os

from uti.errors import UTIError


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Make sure Ray is initialised; returns True when this call started it (the caller shuts it down).

    An already initialised Ray (a test fixture, a notebook, a driver inside a RayJob) is reused as is.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # address="local" always starts a new instance, even when RAY_ADDRESS points at a cluster,
            # so a forgotten environment variable never sends a local check to someone's cluster.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UTIError(f"cannot start or reach {where}: {exc}") from None
    return True


def shutdown() -> None:
    import ray

    ray.shutdown()
