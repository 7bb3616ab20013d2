"""Starting or joining Ray, shared by every job (tokenize, verify, train).

Local instances bind to 127.0.0.1 and run without the dashboard unless asked. Ray 2.60 turns
"127.0.0.1" given as `_node_ip_address` into the machine's routable IP and then listens on every
interface; its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS and
Windows) instead uses the loopback address as the node IP, and every server binds to it. The flag is
read at import time, so both the environment (for the processes Ray starts) and the imported constant
are set around `ray.init`, then restored.

Ray also puts the driver's working directory (and its script's directory) at the front of every
worker's import path; `driver_paths_kept_off_workers` below stops that, so a `verify.py` or `train/`
in the user's folder can never replace one of our packages inside a Ray task or actor.

Processes: a local instance's processes die with the driver however it dies (`kill -9` too): Ray ties
gcs_server, raylet and the dashboard to it, and uti.ray_watchdog stops the rest (the raylet's agents).

SIGTERM: `ray.init` replaces the driver's SIGTERM handler (and its core worker then dumps a stack and
aborts: "Aborted"), so a `kill` or a Kubernetes pod stop skipped every cleanup. `uti` makes SIGTERM
raise `Terminated` (a KeyboardInterrupt) exactly where Ctrl-C would, and `connect` keeps that handler
across `ray.init`; every job then stops the same clean way for both signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Iterator

from uti.errors import UTIError
from uti.quiet import quieter_loggers


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


# The head-node processes a private local instance is started without. Ray's `ray.init` has no flag for
# either (only `ray start --no-monitor`), so `Node` is given them through its RayParams:
# - the autoscaler monitor: one node, nothing to scale. Its SIGTERM handler reports to the GCS, which
#   `ray.shutdown` has already stopped, so every local job would wait 1 s for it to be SIGKILLed (measured:
#   shutdown 1.4-1.6 s with it, 0.25-0.33 s without), and it costs ~0.7 s of CPU while Ray starts;
# - the log monitor: it tails worker logs to stream them to the driver, and uti drivers run with
#   `log_to_driver=False` (the logs stay in the session folder); ~0.65 s of CPU while Ray starts.
_LEAN_HEAD = {"no_monitor": True, "include_log_monitor": False}
IDLE_WORKERS_KEPT = 2  # idle Ray workers a local instance keeps beyond one per CPU (see connect)


@contextlib.contextmanager
def lean_head_node() -> Iterator[None]:
    """Start a local instance's head node without the processes in `_LEAN_HEAD` (for `ray.init` inside)."""
    import ray._private.node as ray_node

    original = ray_node.Node.__init__

    def init(self, ray_params, *args, **kwargs):
        if kwargs.get("head"):
            for name, value in _LEAN_HEAD.items():
                if hasattr(ray_params, name):  # a Ray that renamed one simply starts that process
                    setattr(ray_params, name, value)
        original(self, ray_params, *args, **kwargs)

    ray_node.Node.__init__ = init
    try:
        yield
    finally:
        ray_node.Node.__init__ = original


class _NoDriverSysPath(list):
    """A list that stays empty: Ray's `connect` cannot add the driver's paths to it.

    Ray 2.60 (`ray/_private/worker.py`, `connect`) extends `job_config._py_driver_sys_path` with the
    driver's current directory and script directory, and every worker of the job inserts those at
    sys.path[0]. Our packages are installed on every node, so workers need neither; but a file or folder
    named like one of them (`verify.py`, `sharding.py`, `train/`, ...) in the user's working directory
    would shadow the installed package in every task and actor: `uti verify` would then report healthy
    shards as failing and `uti tokenize` could not start its actors.

    Why this and not a temporary `os.chdir` around `ray.init`: the working directory is process-wide
    (run_tokenize loads codecs in a thread while Ray starts, and a relative tokenizer path would then be
    looked up in the wrong folder), a chdir would also change a local instance's worker directory (so
    every relative path a job sends would break), and it would leave the script directory in place.
    The protection is checked end to end by tests/test_shadowing.py; if a Ray upgrade renames the
    attribute, that test fails rather than the users' results.
    """

    def append(self, item) -> None:  # noqa: D102 - see the class docstring
        pass

    def extend(self, items) -> None:  # noqa: D102
        pass

    def insert(self, index, item) -> None:  # noqa: D102
        pass

    def __iadd__(self, items):
        return self


def driver_paths_kept_off_workers():
    """A JobConfig whose workers get none of the driver's directories on their import path."""
    from ray.job_config import JobConfig

    config = JobConfig()
    if not isinstance(getattr(config, "_py_driver_sys_path", None), list):  # Ray's internals changed
        logging.getLogger(__name__).warning(
            "this Ray version has no JobConfig._py_driver_sys_path: files named like uti's packages in the "
            "working directory may shadow them in Ray workers; run from a folder without such files")
    config._py_driver_sys_path = _NoDriverSysPath()  # not the constructor: `[] or []` would drop the subclass
    return config


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt; the CLI exits 128 + signum (143)."""

    signum = signal.SIGTERM


_received: list[int] = []  # signals our handler turned into exceptions, latest last


def _raise_terminated(signum, frame) -> None:
    _received.append(signum)
    raise Terminated()


def as_received(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """The interrupt as it was sent. Ray's blocking calls (ray.get, ray.wait) run signal handlers in C++
    and turn whatever they raise into a plain KeyboardInterrupt, so SIGTERM during one of them would exit
    130 as if it were Ctrl-C; callers re-raise what this returns."""
    if not isinstance(exc, Terminated) and _received and _received[-1] == signal.SIGTERM:
        return Terminated()
    return exc


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def stop_on_sigterm_like_ctrl_c() -> None:
    """From now on SIGTERM raises Terminated in the main thread (only the main thread can set handlers)."""
    if _in_main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """Keep the process's Python SIGTERM handler (ours under `uti`) across `ray.init`.

    ray.init sets a Python handler that exits with status 15 and no message, and its core worker then
    installs a C-level one behind Python's back that dumps a stack and aborts. Re-installing the Python
    handler afterwards puts it back at the C level too. Without one of ours (a library caller), Ray's
    Python handler is the one re-armed: SystemExit still runs the callers' cleanup, unlike the abort.
    """
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if _in_main_thread():
            handler = before if callable(before) else signal.getsignal(signal.SIGTERM)
            if handler is not None:
                signal.signal(signal.SIGTERM, handler)


# Object-store settings and credentials of the standard chains (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE,
# GOOGLE_APPLICATION_CREDENTIALS, fsspec's FSSPEC_<PROTOCOL>_<OPTION>): the driver's values go to every actor,
# task and Ray Train worker through the job's runtime environment, because on a cluster those processes are
# started by raylets that never saw the driver's environment. Only names are listed here; values are never
# logged or written by uti (Ray keeps the job's runtime environment in its own job table).
# UTI_STORAGE_OPTIONS carries `--storage-options` (sharding.storage.configure_storage_options) the same way.
STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_")
STORAGE_ENV_NAMES = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "UTI_STORAGE_OPTIONS")


def storage_env_vars(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The object-store variables set in `environ` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in sorted(env.items()) if k.startswith(STORAGE_ENV_PREFIXES) or k in STORAGE_ENV_NAMES}


def _submitted_job_env_names() -> set[str]:
    """Variables the runtime env of a `ray job submit` job already sets. Ray refuses to merge a driver's
    runtime env naming the same variable ("Failed to merge the Job's runtime env"), and the entrypoint sees
    them in its own environment, so forwarding them again would stop the job."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job manager for a submitted entrypoint
    try:
        env_vars = ((json.loads(raw) or {}).get("runtime_env") or {}).get("env_vars") or {} if raw else {}
    except (ValueError, AttributeError):
        return set()
    return set(env_vars) if isinstance(env_vars, dict) else set()


def with_storage_env(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """`runtime_env` plus the driver's object-store variables (the caller's own env_vars win; those a
    submitted job's runtime env sets already reach its workers and are left out)."""
    taken = _submitted_job_env_names()
    forwarded = {k: v for k, v in storage_env_vars().items() if k not in taken}
    if not forwarded:
        return runtime_env
    merged = dict(runtime_env or {})
    merged["env_vars"] = {**forwarded, **dict(merged.get("env_vars") or {})}
    return merged


def _gcs_address(address: str) -> str | None:
    """HOST:PORT of the cluster's GCS for `address` ("auto" resolved as Ray resolves it); None for a Ray
    Client address (ray://) or when it cannot be resolved (ray.init then says why)."""
    if address.startswith("ray://"):
        return None
    if address != "auto":
        return address  # as given: Ray's canonical form swaps 127.0.0.1 for the routable IP
    # Ray's "multiple active Ray instances" notice comes again from ray.init
    with quieter_loggers(["ray._private.services"], logging.ERROR):
        try:
            from ray._private.services import canonicalize_bootstrap_address

            return canonicalize_bootstrap_address(address)
        except Exception:  # noqa: BLE001 - an address Ray itself will refuse with its own message
            return None


def auth_problem(address: str, *, timeout: float = 3.0) -> str | None:
    """Why joining `address` would never finish: a cluster with token authentication (what `ray start`
    turns on in Ray 2.60) and a client that sends no token. ray.init then retries forever, printing
    "InvalidAuthToken" every second. A 5 ms request to the GCS tells it; None when all is well or when the
    probe itself cannot tell (ray.init then goes ahead and reports its own errors)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return None  # the client sends its token
    gcs = _gcs_address(address)
    if gcs is None:
        return None
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        with grpc.insecure_channel(gcs) as channel:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - only an unauthenticated answer is a finding
        code = getattr(exc, "code", None)
        if callable(code) and getattr(code(), "name", "") == "UNAUTHENTICATED":
            where = address if gcs == address else f"{address} ({gcs})"
            return (f"the Ray cluster at {where} uses token authentication and this client sends no "
                    "token: export RAY_AUTH_MODE=token (on a machine where `ray start` ran, the token is read from "
                    "~/.ray/auth_token; elsewhere also set RAY_AUTH_TOKEN to the cluster's token)")
    return None


def connect(address: str | None, *, num_cpus: int | None = None, dashboard: bool = False,
            runtime_env: dict[str, Any] | None = None) -> bool:
    """Make sure Ray is initialised; returns True when this call started it (the caller shuts it down).

    An already initialised Ray (a test fixture, a notebook, the driver of a RayJob) is reused as is (its
    runtime environment is its owner's: give it the AWS_* variables there, see `with_storage_env`). A
    cluster joined at `address` gets the driver's object-store variables through the job's runtime env;
    a local instance inherits them.
    `address` None starts a private local instance: address="local" never follows a stray RAY_ADDRESS
    to somebody's cluster.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Token auth stays on; only its every-start notice is kept out of the user's terminal.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                              "job_config": driver_paths_kept_off_workers()}
    if address:
        # A local instance needs no forwarding: its raylet is this process's child and every worker inherits
        # the driver's environment. Forwarding anyway gives every local job a runtime env, and Ray then
        # starts a new worker for each task and actor beside the ones it has prestarted for the job
        # (which stay idle: ~0.6 s of CPU each, wasted, whenever e.g. AWS_CA_BUNDLE is set).
        runtime_env = with_storage_env(runtime_env)
    if runtime_env:
        common["runtime_env"] = runtime_env
    try:
        with sigterm_handler_kept():
            if address:
                problem = auth_problem(address)
                if problem:
                    raise UTIError(problem)
                ray.init(address=address, **common)
            else:
                # Ray kills idle workers beyond one per CPU after 1 s. When every CPU holds an actor, each
                # short task (a shard's writer) would then start a new worker process (~0.7 s of CPU) and
                # wait for it; so up to IDLE_WORKERS_KEPT idle workers stay for the next task.
                cpus = num_cpus if num_cpus is not None else os.cpu_count() or 1
                with loopback_only(), lean_head_node():
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                             dashboard_host="127.0.0.1",
                             _system_config={"num_workers_soft_limit": cpus + IDLE_WORKERS_KEPT}, **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UTIError(f"cannot start or reach {where}: {exc}") from None
    if not address:
        from uti import ray_watchdog

        ray_watchdog.start(ray._private.worker._global_node)  # its processes die with this one (see there)
    return True


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))
