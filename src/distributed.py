"""Multi-process training: ``torchrun --nproc_per_node=N train.py`` -> DistributedDataParallel.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is
a no-op for a single process. Backend: nccl on CUDA, gloo on CPU. Only rank 0
writes files and logs (``DistInfo.is_main``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from src.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def choose_device(preference: str, local_rank: int = 0, source: str = "training.device") -> torch.device:
    """THE device chooser: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device.

    ``auto`` and ``cuda`` mean cuda:LOCAL_RANK (torchrun sets it; 0 otherwise)
    when CUDA is visible, ``auto`` falls back to the CPU. ``source`` names the
    setting in errors (training.device, or test.py's --device).
    """
    valid = preference in ("auto", "cpu", "cuda") or (preference.startswith("cuda:") and preference[5:].isdigit())
    if not valid:
        raise UserError(f"{source}: must be one of auto, cpu, cuda, cuda:N; got '{preference}'")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{source}={preference} but no CUDA device is visible here; use auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(preference[5:]) if preference.startswith("cuda:") else local_rank
    if index >= torch.cuda.device_count():
        raise UserError(f"{source}={preference}: only {torch.cuda.device_count()} CUDA devices are visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (e.g. a finite loss everywhere)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when ``flag`` holds on some rank (e.g. a stop request)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when more than one process runs."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        return DDP(model, device_ids=[device.index], output_device=device.index)
    return DDP(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model
