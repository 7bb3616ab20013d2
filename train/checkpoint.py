"""Checkpoints in RUN/checkpoints/step-NNNNNN/, written directly by the workers (not via Ray's
checkpoint upload): RUN is a folder every worker and the driver can reach (local disk on one
machine, a shared filesystem on a cluster), and this keeps resume independent of Ray's storage.

Layout of one checkpoint:

    model.pt              model state dict: tensors only, plain FQNs (no DDP/FSDP prefixes)
    optimizer.pt          optimizer state keyed by parameter FQN (torch.distributed.checkpoint format)
    scheduler.pt          LR scheduler state
    config.json           the Hugging Face model config (rebuilds the architecture without downloads)
    data-rank00000.pt ... per rank: reader states, round-robin turn, packer's pending docs, counters,
                          torch RNG state
    token_space.json/.sha256, run_config.json, trainer_state.json (step, world size, metrics)
    COMPLETE              written last; a folder without it is ignored (the rename makes it atomic)

Everything is loaded with torch.load(weights_only=True): no pickled code runs on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from train.config import TrainConfig, TrainError
from train.model import strip_prefix
from uti.errors import TokenSpaceError
from uti.token_space import TokenSpace

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d{6,})")


def step_dir(run: str | os.PathLike, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(run: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _STEP_DIR.fullmatch(child.name)
        if m and (child / COMPLETE).is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def latest_checkpoint(run: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def load_tensors(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, always; a missing or foreign file names the fix. mmap: map the
    tensors' storages instead of reading them (what check_loadable needs)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: missing from the checkpoint; it is incomplete, delete the folder to fall back "
                         "to the previous checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        first = (str(exc).strip().splitlines() or [""])[0]
        raise TrainError(f"{path}: cannot be loaded with weights_only=True ({type(exc).__name__}: {first}); "
                         "it was not written by uti train or is corrupt") from None


def tensor_files(ckpt: str | os.PathLike, world_size: int) -> list[Path]:
    """The files a resume loads with torch.load: model, optimizer, scheduler and every old rank's data state."""
    ckpt = Path(ckpt)
    return [ckpt / "model.pt", ckpt / "optimizer.pt", ckpt / "scheduler.pt",
            *(ckpt / f"data-rank{r:05d}.pt" for r in range(world_size))]


def check_loadable(ckpt: str | os.PathLike, world_size: int) -> None:
    """On the driver, before any worker starts: every file a resume loads is there and loads with
    weights_only=True. A damaged or tampered checkpoint is refused at once, naming the file, instead of
    after Ray has started the workers that would load it; nothing in it runs either way. The storages are
    memory-mapped, not read, so a large model costs the driver neither the time nor the memory of a load."""
    for path in tensor_files(ckpt, world_size):
        load_tensors(path, mmap=True)


def read_trainer_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    path = Path(ckpt) / TRAINER_STATE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainError(f"{path}: unreadable ({exc}); the checkpoint is damaged") from None


def checkpoint_space(ckpt: str | os.PathLike) -> TokenSpace:
    try:
        return TokenSpace.load(ckpt)
    except TokenSpaceError as exc:
        raise TrainError(f"checkpoint {ckpt}: {exc}") from None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(
    run: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    hf_config: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: Mapping[str, Any],
    space: TokenSpace,
    cfg: TrainConfig,
    trainer_state: Mapping[str, Any],
    rank: int,
) -> Path:
    """Collective: every rank calls it (FSDP gathers the full state; each rank writes its data state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    final = step_dir(run, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # The training wrapper (train.model.PackedLM) adds "lm."; model.pt holds the plain HF names.
    model_sd = strip_prefix(get_model_state_dict(model, options=options))
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    torch.save({k: v for k, v in data_state.items()}, tmp / f"data-rank{rank:05d}.pt")
    if rank == 0:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, tmp / "model.pt")
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        hf_config.save_pretrained(str(tmp))
        space.write(tmp)
        _write_json(tmp / "run_config.json", cfg.to_dict())
        _write_json(tmp / TRAINER_STATE, {"step": step, "token_space_id": space.id, **trainer_state})
    _barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text(f"step {step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier()
    return final


def load_data_state(ckpt: str | os.PathLike, rank: int) -> dict[str, Any]:
    return load_tensors(Path(ckpt) / f"data-rank{rank:05d}.pt")
