"""torch.distributed set-up for ``torchrun``: NCCL on GPUs, gloo on CPU.

Under ``torchrun`` the environment carries RANK, WORLD_SIZE and LOCAL_RANK; a plain process
has none of them and runs alone. Nothing here schedules work: the engine shards samples by rank.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[int, int, str]]:
    """Yield (rank, world_size, this rank's device); init and tear down the group if launched."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield (dist.get_rank(), dist.get_world_size(), device) if dist.is_initialized() else (0, 1, device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()
