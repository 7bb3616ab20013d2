"""The version guard of train.ray_train_patches: the installed Ray is the one the patches were written
against, and every private Ray name they use or override still exists in it."""

from __future__ import annotations

import importlib
import inspect

import pytest
import ray

from train import ray_train_patches as patches

PATCHES_FILE = "train/ray_train_patches.py"


def _lookup(module: str, path: str):
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)  # AttributeError names the missing part
    return obj


def test_installed_ray_is_the_version_the_patches_were_written_against():
    assert ray.__version__ == patches.RAY_VERSION, (
        f"Ray {ray.__version__} is installed, but {PATCHES_FILE} was written against Ray {patches.RAY_VERSION}: "
        f"read each patch there against the installed Ray's source (PRIVATE_NAMES, PRIVATE_ENV, PRIVATE_LOGGERS), "
        f"fix what moved, then set RAY_VERSION = {ray.__version__!r}")


@pytest.mark.parametrize("module,path", patches.PRIVATE_NAMES, ids=[p for _, p in patches.PRIVATE_NAMES])
def test_every_private_name_patched_exists(module, path):
    try:
        _lookup(module, path)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"Ray {ray.__version__} has no {module}.{path} ({exc}), which {PATCHES_FILE} uses: rewrite "
                    "that patch for this Ray")


def test_overridden_methods_are_methods_of_rays_trainer():
    # An override of a method Ray no longer calls would silently do nothing: each must still be Ray's own.
    from ray.train.torch import TorchTrainer

    trainer = patches.patched_trainer_class(own_instance=True)
    overridden = {name for name, value in vars(trainer).items()
                  if name.startswith("_") and not name.startswith("__") and callable(value)}
    assert overridden == {"_register_sigint_handler", "_create_default_callbacks", "_initialize_and_run_controller"}
    assert {f"TorchTrainer.{name}" for name in overridden} <= {path for _, path in patches.PRIVATE_NAMES}
    for name in overridden:
        assert inspect.isfunction(getattr(TorchTrainer, name, None)), f"TorchTrainer.{name} is gone ({PATCHES_FILE})"


def test_controller_gets_the_scaling_policy_the_patch_replaces():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert "scaling_policy=" in inspect.getsource(DataParallelTrainer), (
        f"Ray {ray.__version__}'s DataParallelTrainer no longer passes scaling_policy= to "
        f"_initialize_and_run_controller: {PATCHES_FILE}'s autoscaler patch would do nothing")


@pytest.mark.parametrize("variable", sorted(patches.PRIVATE_ENV))
def test_environment_variables_are_the_ones_ray_train_reads(variable):
    module, constant = patches.PRIVATE_ENV[variable]
    assert variable in patches.RAY_TRAIN_ENV | patches.LOCAL_RAY_TRAIN_ENV
    assert _lookup(module, constant) == variable, (
        f"Ray {ray.__version__} reads {_lookup(module, constant)!r}, not {variable!r} ({module}.{constant}): "
        f"update {PATCHES_FILE}")


def test_every_ray_logger_lowered_is_a_ray_module():
    from train.ray_hooks import _NOISY

    assert set(_NOISY) <= set(patches.PRIVATE_LOGGERS)
    for name in patches.PRIVATE_LOGGERS:
        try:
            importlib.import_module(name)
        except ImportError:
            pytest.fail(f"Ray {ray.__version__} has no module {name}, whose logger {PATCHES_FILE} lowers: "
                        "name the module that logs those lines now")


def test_owns_local_instance_is_true_for_the_local_instance_this_process_started(ray_session):
    # the session's Ray is a local instance started by this process (tests/conftest.py), as `uti train`'s own is
    assert patches.owns_local_instance() is True
