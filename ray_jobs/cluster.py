"""Connecting to Ray: a private local instance by default, or a given cluster address."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(address: str | None, *, dashboard: bool = False, num_cpus: int | None = None) -> bool:
    """Initialise Ray; returns True when this call started a local instance (the caller shuts it down).

    Local instances run without the dashboard unless asked (and then bound to 127.0.0.1), with Ray's
    token authentication (on by default in Ray 2.60) guarding its gRPC ports, which Ray itself binds
    on the node address: Ray has no loopback-only mode for them.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "configure_logging": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **common)
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", **common)
    return True


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
