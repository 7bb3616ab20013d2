"""Shared fixtures. Loading codecs costs seconds, so the default tokenizer is built once per session; starting
Ray costs seconds too, so every module that needs a local Ray shares one instance (`ray_session`)."""

from __future__ import annotations

import os
import signal

import pytest

# Keep test runs quiet and local: no Ray dashboard, no usage stats, no hub lookups.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every Ray of the suite is local: Ray Train's preemption watcher (one more process per training run, as
# train.runner leaves out on the local instances `uti train` starts itself) has no node to watch.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


# A suite started in the background of a non-interactive shell inherits SIGINT ignored (POSIX), and every
# `uti` it starts would too: the Ctrl-C tests need what a terminal gives a command.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def compile_our_packages() -> None:
    """Bytecode for our packages, written once per session when Python writes none itself
    (PYTHONDONTWRITEBYTECODE=1, as on the reference machine): every Ray worker, codec actor and CLI
    subprocess of the suite otherwise compiles our sources again (0.1-0.2 s each, hundreds a session).
    Up-to-date files are skipped, so this costs nothing after the first session."""
    import compileall
    import importlib.util
    import sys

    if not sys.dont_write_bytecode:
        return
    for name in ("uti", "sharding", "ray_jobs", "verify", "train", "demo", "bench"):
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(folder, quiet=1)


compile_our_packages()


@pytest.fixture(scope="session")
def default_tokenizer():
    from uti.tokenizer import UnifiedTokenizer

    return UnifiedTokenizer()


@pytest.fixture(scope="session")
def default_space(default_tokenizer):
    return default_tokenizer.space


# ---- one local Ray for the session ----------------------------------------------------------------------
# Logical CPUs of the shared instance: Ray's num_cpus is a count, not the machine's cores. 3 fits every user:
# two 1-CPU codec actors plus a read task (tokenize), two Ray Train workers (train), verify's tasks.
SHARED_RAY_CPUS = 3


class SharedRay:
    """The session's local Ray, started through uti.ray_local.connect (loopback only, no dashboard: the
    security test shows a bare ray.init listening on every interface) and restarted after a module that
    needed a Ray of its own (`private_ray`) stopped it."""

    def __init__(self) -> None:
        self.owned = False

    def ensure(self):
        import ray

        from uti.ray_local import connect

        if not ray.is_initialized():
            # Like `uti train`'s own local instance: no runtime env (train.runner.ensure_ray).
            self.owned = connect(None, num_cpus=SHARED_RAY_CPUS)
        return ray

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.owned = False


def own_ray_modules_last(items: list) -> list:
    """The test items with every module that needs a Ray of its own (`private_ray`) moved after the others,
    each in its order: such a module stops the session's shared Ray, and the next module that needs the
    shared one started it again (4-5 s of a 2-core machine each time, three times a session)."""
    def path(item):
        return str(getattr(item, "path", getattr(item, "fspath", "")))

    own = {path(i) for i in items if "private_ray" in getattr(i, "fixturenames", ())}
    return [i for i in items if path(i) not in own] + [i for i in items if path(i) in own]


def pytest_collection_modifyitems(session, config, items):
    items[:] = own_ray_modules_last(items)


@pytest.fixture(scope="session")
def _shared_ray():
    shared = SharedRay()
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def ray_session(_shared_ray):
    """The `ray` module, initialised: one local instance (SHARED_RAY_CPUS logical CPUs) for every module of
    the session. Tests may kill actors on it but never shut it down."""
    return _shared_ray.ensure()


@pytest.fixture(scope="module")
def private_ray(_shared_ray):
    """For a module that needs a Ray of its own (another CPU count, a multi-node cluster, a subprocess
    cluster): the shared instance is stopped first (the next module that asks for it gets a new one), and
    the module starts and stops its own. Yields the shared instance's handle: a module that used a session
    fixture needing it (`reference_run` the first time) calls `.stop()` again before starting its own."""
    _shared_ray.stop()
    yield _shared_ray
    import ray

    if ray.is_initialized():  # the module's own instance, if it left it running
        ray.shutdown()


# ---- one tokenize input set and its clean runs ------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenize_manifests(tmp_path_factory) -> list[str]:
    """tokenize_helpers.make_manifests (Clotho + LLaVA layouts, 10 good files and 3 broken ones), written
    once: samples record their absolute source path, so runs compared byte for byte share these inputs."""
    from tokenize_helpers import make_manifests

    return make_manifests(tmp_path_factory.mktemp("tokenize-data"))


@pytest.fixture(scope="session")
def reference_run(_shared_ray, tokenize_manifests, tmp_path_factory):
    """reference_run(shard_samples) -> (OUT, job dict): the clean run of `tokenize_manifests` with two
    actors on the shared Ray, done once per session and shard size (several modules compare against the
    same run). Read it or copy it; never write into it."""
    from ray_jobs.config import TokenizeConfig
    from ray_jobs.job import run_tokenize

    runs: dict[int, tuple] = {}

    def get(shard_samples: int):
        if shard_samples not in runs:
            _shared_ray.ensure()
            out = tmp_path_factory.mktemp(f"reference-{shard_samples}") / "out"
            job = run_tokenize(TokenizeConfig(manifests=tuple(tokenize_manifests), out=str(out),
                                              shard_samples=shard_samples, num_actors=2, progress=False))
            runs[shard_samples] = (out, job)
        return runs[shard_samples]

    return get


# ---- a real S3 endpoint on 127.0.0.1 (moto's server), one per module that asks ----------------------------
@pytest.fixture(scope="module")
def s3():
    from s3_helpers import start_s3_server, stop_s3_server

    server = start_s3_server()
    yield server
    stop_s3_server(server)


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The AWS_* variables that point s3fs (and Ray workers started now) at the test server."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3
