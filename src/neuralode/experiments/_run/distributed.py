"""Multi-process training with PyTorch's own stack: ``torchrun`` + DDP (gloo on CPU, nccl on GPU).

Nothing home-made: the process group is set up from the environment variables that
``torchrun`` exports (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...). A plain
``python``/``neuralode`` invocation is a world of one and never touches
``torch.distributed``.

Data parallelism is by splitting every *global* batch into equal contiguous pieces, one
per rank. With a mean loss and the gradient average that DDP performs, one step of a
world of ``W`` processes equals one step of a single process on the whole batch (for
models without cross-sample layers such as batch norm; all of ours use group norm).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, prints, and draws progress bars."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> World:
        """Join the process group that ``torchrun`` describes, or be a world of one.

        Args:
            device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        """
        if device == "cuda" and not torch.cuda.is_available():
            # torch's own error is an AssertionError from deep inside the first .to("cuda").
            why = (
                "torch was built without CUDA"
                if torch.version.cuda is None
                else "no GPU is visible"
            )
            raise ValueError(
                f"--device cuda: CUDA is not available here ({why}; torch {torch.__version__}); "
                "use --device cpu, or --device auto to take a GPU only when there is one"
            )
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls(device=torch.device("cuda" if use_cuda else "cpu"))
        rank = int(os.environ["RANK"])
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"--device cuda: process {rank} wants GPU {local} but only "
                    f"{torch.cuda.device_count()} are visible; start at most that many "
                    "processes per node (torchrun --nproc-per-node)"
                )
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=rank, size=size, device=dev)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` in a world of several processes, else ``model``."""
        if self.size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def batch_share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous piece of a global batch of indices."""
        if self.size == 1:
            return batch
        return batch.tensor_split(self.size)[self.rank]

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """Every ``size``-th index starting at ``rank`` (for evaluation)."""
        return indices[self.rank :: self.size]

    def sum(self, values: Mapping[str, float]) -> dict[str, float]:
        """Sum named numbers over all ranks (float64, so counts stay exact)."""
        keys = sorted(values)
        if self.size == 1 or not keys:
            return {k: float(values[k]) for k in keys}
        packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        if self.device.type == "cuda":
            packed = packed.to(self.device)
        dist.all_reduce(packed)
        return dict(zip(keys, packed.tolist(), strict=True))

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (e.g. a run folder named after rank 0's clock)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank (no-op in a world of one)."""
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (its state dict has no ``module.`` prefix)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(model, nn.parallel.DistributedDataParallel) and inner else model
