"""The process group and device of this process.

Processes are started by ``torchrun`` or ``accelerate launch`` (both set
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address); without
them this is a single process and nothing is initialised. There is no
process management here.

With context parallelism (``setup(..., context_parallel=N)``) the processes
form a ``(dp, cp)`` DeviceMesh of ``world / N`` data-parallel replicas of
``N`` context-parallel ranks (rank = dp_rank * N + cp_rank): the ranks of a
``cp`` group hold slices of the same sequences (train/context_parallel.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when this module initialised the process group (and tears it down)
    cp_size: int = 1  # context-parallel ranks per data-parallel replica
    cp_group: object = None  # their process group (None without context parallelism)
    mesh: object = None  # the (dp, cp) DeviceMesh with context parallelism

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp_size

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: processes reading different examples."""
        return self.world_size // self.cp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        """In-place all-reduce (sum by default) across processes; identity when single."""
        if self.distributed:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def gather_objects(self, obj) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self):
        """Run a block on rank 0 first (e.g. to fill a cache), then on the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("engine.device is cuda but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.startswith("cuda:") and not torch.cuda.is_available():
        raise ValueError(f"engine.device is {device} but no CUDA device is available")
    return torch.device(device)


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto", context_parallel: int = 1) -> DistEnv:
    """Join the process group the launcher described (NCCL on CUDA, gloo on CPU); with
    ``context_parallel > 1`` also build the ``(dp, cp)`` mesh."""
    from .context_parallel import check_degree

    world = launched_world_size()
    check_degree(context_parallel, world)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _resolve_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    env = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)
    if context_parallel > 1:
        from torch.distributed.device_mesh import init_device_mesh

        check_degree(context_parallel, world)
        shape = (world // context_parallel, context_parallel)
        env.mesh = init_device_mesh(dev.type, shape, mesh_dim_names=("dp", "cp"))
        env.cp_size, env.cp_group = context_parallel, env.mesh["cp"].get_group()
    return env


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
