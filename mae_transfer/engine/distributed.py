"""torchrun / Slurm process-group setup (DDP; gloo on CPU, nccl on GPU)."""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the process group (and cleanup ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Reads torchrun's (RANK, WORLD_SIZE, LOCAL_RANK) or Slurm's (SLURM_PROCID, SLURM_NTASKS,
    SLURM_LOCALID with MASTER_ADDR/PORT set by the launcher) variables; one process otherwise."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])
    else:
        rank, world, local = 0, 1, 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owned = world > 1 and not dist.is_initialized()
    if owned:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local, dev, owns_group=owned)


def all_reduce_sum(value: int, info: DistInfo) -> int:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t)
    return int(t.item())


def barrier(info: DistInfo):
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo):
    """End the process group only if this run created it: a caller's own group stays theirs."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
