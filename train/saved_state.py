"""Saved state declared once per class: a class names its state's keys (STATE_KEYS, in the order they are
written, which is the order a checkpoint holds them in); state_dict builds them in that order
(in_declared_order) and a load refuses a state with any other keys (check_keys), so nothing saved is
ignored on load and nothing missing is guessed."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from train.config import TrainError


def in_declared_order(keys: Sequence[str], values: Mapping[str, Any]) -> dict:
    """A saved state: `values` in the order of the declared `keys`. A key built but not declared, or
    declared but not built, is a bug of the class that saves it."""
    if set(values) != set(keys):
        raise AssertionError(f"state keys {sorted(values)} differ from the declared {sorted(keys)}")
    return {key: values[key] for key in keys}


def check_keys(state: Mapping[str, Any], keys: Sequence[str], *, what: str) -> None:
    """Refuse a saved state whose keys are not the declared `keys`, naming the ones that differ."""
    unknown, missing = sorted(set(state) - set(keys)), sorted(set(keys) - set(state))
    if unknown or missing:
        differ = [f"{label} key(s) {', '.join(names)}" for label, names in (("unknown", unknown), ("no", missing))
                  if names]
        raise TrainError(f"{what} has {'; '.join(differ)} (expected {', '.join(keys)}); resume with the uti version "
                         "that wrote the checkpoint, or start a new --out")
