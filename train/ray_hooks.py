"""Setup hook for every Ray worker process of a `uti train` run on a joined cluster (runtime_env
worker_process_setup_hook; a local instance `uti train` starts runs no placement-group cleaner).

Ray Train 2.x starts a PlacementGroupCleaner actor that polls the State API once per second; the
State API lives in the dashboard, which a local `uti train` does not start (include_dashboard=False),
so every poll would log a warning. The cleaner only matters when the driver dies uncleanly; its
warnings are lowered to errors-only here. Nothing else is changed.
"""

from __future__ import annotations

import logging

_NOISY = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_worker_logs() -> None:
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


RUNTIME_ENV = {"worker_process_setup_hook": "train.ray_hooks.quiet_worker_logs"}
