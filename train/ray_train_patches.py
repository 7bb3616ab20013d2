"""Every use of Ray's internals by `uti train`, in one place: private names can move or change in any Ray
release, so they are written against one version (RAY_VERSION) and listed (PRIVATE_NAMES, PRIVATE_ENV,
PRIVATE_LOGGERS) for tests/test_train_patches.py, which fails when the installed Ray is another version
or lacks one of them. A Ray whose internals moved still trains: each patch falls back to Ray's own
behaviour (slower, never wrong).

- owns_local_instance: whether this process started the local Ray instance (`ray._private.worker._global_node`);
- ray_train_env: Ray Train's controller settings (health-check interval, preemption watcher) by environment;
- quiet_local_mode: Ray Train's local-mode loggers lowered to warnings;
- patched_trainer_class: the TorchTrainer whose fit() lets Ctrl-C through and which starts no actor a run
  does not use (overrides of `_register_sigint_handler`, `_create_default_callbacks`,
  `_initialize_and_run_controller`, and of FixedScalingPolicy's autoscaler calls).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from uti.quiet import quieter_loggers

# The Ray release every patch here was read against and measured with.
RAY_VERSION = "2.60.0"

# (module, attribute path) of every private Ray name used or overridden here.
PRIVATE_NAMES = (
    ("ray._private.worker", "_global_node"),
    ("ray.train.torch", "TorchTrainer._register_sigint_handler"),
    ("ray.train.torch", "TorchTrainer._create_default_callbacks"),
    ("ray.train.torch", "TorchTrainer._initialize_and_run_controller"),
    ("ray.train.v2._internal.callbacks.datasets", "DatasetsCallback"),
    ("ray.train.v2._internal.callbacks.placement_group_callback", "PlacementGroupCleanerCallback"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy.after_controller_start"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy._maybe_send_resource_request"),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy._send_resource_request"),
)

# Ray Train 2.x's controller looks at its workers once every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s,
# ray/train/v2/_internal/constants.py): a run whose last step is done, or whose worker failed, is noticed only at a
# later look (the last report and the end of the worker's function take one look each: 2.5-3.7 s measured between the
# workers' last report and the controller's shutdown of them). With the default, every `uti train` and every failure
# makes the user wait that long for nothing. A look is one small remote call per worker (one that takes longer than the
# interval is simply waited for; only one hung for 10 min marks a worker dead), so looking every 0.1 s costs no
# measurable CPU (measured: the controller uses 3.5 s of CPU over a short run with either interval; the end of the run
# comes 0.3 s after the workers' at 0.1 s, 2.2-4.3 s after at 2 s). Ray reads the value from the driver's environment
# when fit() starts the controller, and passes it on to the controller and the workers (get_env_vars_to_propagate).
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
# On the local instance a run started itself (one node, no autoscaler) no node can be drained: Ray Train's
# preemption watcher, one more actor process per run that polls the node's drain state (1.6-2 s of CPU each
# run, measured on 2 cores, taken from the workers while they start), has nothing to watch.
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Each variable above -> the (module, constant) of Ray Train that names it, so a renamed variable is noticed.
PRIVATE_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": ("ray.train.v2._internal.constants", "HEALTH_CHECK_INTERVAL_S_ENV_VAR"),
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": ("ray.train.v2._internal.constants", "ENABLE_PREEMPTION_WATCHER_ENV_VAR"),
}

# Ray Train's local mode (--num-workers 0) logs at INFO that it runs and every reported metrics dict in full;
# uti prints its own progress and summary.
LOCAL_MODE_LOGGERS = ("ray.train.v2.api.config", "ray.train.v2._internal.execution.train_fn_utils")
# Loggers named after Ray modules (these and train.ray_hooks'): a moved module leaves the level unchanged.
PRIVATE_LOGGERS = LOCAL_MODE_LOGGERS + ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def owns_local_instance() -> bool:
    """True when this process started the local Ray instance it is connected to (`ray.init` without an
    address: `uti train`'s own, a test session's). Ray ties that instance's processes to this one (they die
    when it dies, however it dies), so nothing of a run can outlive its driver there."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # the Node this process started or joined
    return bool(node is not None and node.head)


@contextlib.contextmanager
def ray_train_env(*, local: bool) -> Iterator[None]:
    """RAY_TRAIN_ENV (and LOCAL_RAY_TRAIN_ENV on a local instance this run started) in this process's
    environment while the trainer runs; a value the user set wins, and the environment is restored
    afterwards (a library caller's process is left unchanged)."""
    wanted = RAY_TRAIN_ENV | (LOCAL_RAY_TRAIN_ENV if local else {})
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def quiet_local_mode(on: bool) -> contextlib.AbstractContextManager[None]:
    """While on: LOCAL_MODE_LOGGERS say warnings only (uti.quiet); their levels are restored afterwards."""
    return quieter_loggers(LOCAL_MODE_LOGGERS if on else ())


def patched_trainer_class(*, own_instance: bool) -> type:
    """Ray Train's TorchTrainer without the actors it starts for what a run does not use; each is one more
    process per run (a Ray worker that imports Ray Train, seconds of CPU on 2 cores while the training
    workers start; 7 s less from fit() to the first step measured on a loaded 2-core machine):
    - the DatasetManager (Ray Data shards): the workers read shards themselves (train.stream), no Ray Dataset
      is passed in;
    - with `own_instance` (a local instance this process started, owns_local_instance): the
      PlacementGroupCleaner, a detached actor that removes the run's placement group if the driver dies
      without doing it (the driver's death takes the instance and the group with it), and the
      AutoscalingCoordinator that the scaling policy tells which resources to ask an autoscaler for (a
      local instance has none): 2.5-3.5 s less to the first step of a `uti train` on 2 cores."""
    from ray.train.torch import TorchTrainer
    try:  # a Ray that moved these keeps all its callbacks (slower, never wrong)
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    except ImportError:
        DatasetsCallback = PlacementGroupCleanerCallback = FixedScalingPolicy = ()  # isinstance(c, ()) is False

    class Trainer(TorchTrainer):
        """TorchTrainer whose fit() lets Ctrl-C through as KeyboardInterrupt.

        Ray Train's own SIGINT handler asks the controller to abort and swallows the signal; while the
        workers cannot be placed the abort never completes, so Ctrl-C seemed ignored and the third one
        exited 1 without a word. Here the handler is not installed (Python's default stays: one Ctrl-C
        raises KeyboardInterrupt out of fit()), and the controller is kept so train.runner can kill it."""

        controller = None

        def _register_sigint_handler(self, controller) -> None:
            self.controller = controller

        def _create_default_callbacks(self):
            unused = (DatasetsCallback, PlacementGroupCleanerCallback if own_instance else ())
            return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]

        def _initialize_and_run_controller(self, **kwargs):
            policy = kwargs.get("scaling_policy")
            if own_instance and type(policy) is FixedScalingPolicy:
                kwargs["scaling_policy"] = _without_autoscaler(FixedScalingPolicy)(policy.scaling_config)
            return super()._initialize_and_run_controller(**kwargs)

    return Trainer


def _without_autoscaler(fixed: type) -> type:
    """Ray Train's FixedScalingPolicy (the same fixed worker group) that never creates or calls the
    AutoscalingCoordinator actor: nothing on a local instance acts on its resource requests. Made here so
    it is pickled by value to the controller, like Ray's own policy object."""

    class NoAutoscalerPolicy(fixed):
        def after_controller_start(self, train_run_context) -> None:  # Ray's creates the coordinator here
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

    return NoAutoscalerPolicy
