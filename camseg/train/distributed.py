"""Multi-process training glue (torchrun / accelerate launch): joining the process group,
rank-0-first sections, sharing the run folder's name, and a gloo shim for fastai.

Single-process runs pass straight through every function here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from fastai.torch_core import num_distrib, rank_distrib


@contextlib.contextmanager
def rank0_first() -> Any:
    """Rank 0 runs the block first, the other ranks after it (no-op when not distributed)."""
    if num_distrib() <= 1:
        yield
        return
    import torch.distributed as dist

    if rank_distrib() != 0:
        dist.barrier()
    yield
    if rank_distrib() == 0:
        dist.barrier()


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun/accelerate describe in the environment (once).

    accelerate's PartialState picks nccl on GPUs and, told cpu=True, gloo on CPU; the
    Accelerator fastai's distrib_ctx makes later reuses the same state.
    """
    from accelerate import PartialState

    PartialState(cpu=device.type == "cpu")
    patch_fastai_broadcast()


def patch_fastai_broadcast() -> None:
    """Compatibility shim: fastai's DistributedDL broadcasts the shuffled order through a CUDA
    tensor ("nccl only works with cuda tensors"), which fails under gloo on CPU. Broadcast on
    the device the backend wants instead; under nccl this is exactly fastai's behaviour."""
    import torch.distributed as dist
    from fastai.distributed import DistributedDL

    def _broadcast(self: Any, t: list[int], rank: int) -> list[int]:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor(t, dtype=torch.long, device=device)
        dist.broadcast(tensor, rank)
        return tensor.cpu().tolist()

    DistributedDL._broadcast = _broadcast


def share_path(path: Path | None) -> Path:
    """Rank 0's path on every rank (rank 0 makes the run folder; the others learn its name)."""
    if num_distrib() <= 1:
        assert path is not None
        return path
    import torch.distributed as dist

    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])  # type: ignore[arg-type]
