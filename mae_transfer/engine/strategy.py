"""How a model is spread over the processes: `ddp` (every process holds the whole model, its gradients and
both AdamW moments: 16 bytes a parameter) or `fsdp` (torch's FSDP2, `fully_shard`: each of N processes
holds 1/N of them, whole blocks gathered only while they compute).

FSDP2 is applied per transformer block and then to the root, so one block's parameters are gathered at a
time; under amp=bf16 its mixed-precision policy gathers parameters in bf16 and reduces gradients in fp32, and
the forward runs under autocast as under ddp (the loss and its targets in fp32); on a CPU it runs in fp32. The
order that works: activation checkpointing, then compiling each block, then sharding (torchtitan's order).
Parameter names are unchanged by sharding, so timm's parameter groups (no weight decay on biases and norms,
layer-wise lr decay) are the same under both strategies.
"""
import contextlib
from typing import Dict, Iterator

import torch
from timm.models.vision_transformer import Block
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..errors import CheckpointError
from .common import autocast
from .distributed import DistInfo

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the whole tensors, on rank 0, in CPU memory


def blocks(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The transformer blocks (encoder and decoder), FSDP's units of sharding and of recomputation."""
    return (m for m in model.modules() if isinstance(m, Block))


class Strategy:
    """`ddp`: DistributedDataParallel over several processes, the bare model on one."""
    name = "ddp"
    sharded = False

    def __init__(self, info: DistInfo, amp: str = "none", compile: bool = False, grad_checkpointing: bool = False,
                 reshard_after_forward: bool = True):
        self.info, self.amp, self.compile = info, amp, compile
        self.grad_checkpointing, self.reshard_after_forward = grad_checkpointing, reshard_after_forward

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the forward runs through. The optimizer is built after this, on `model` (whose parameters
        FSDP replaces by their shards)."""
        if self.grad_checkpointing:
            set_grad_checkpointing(model)
        net = model
        if self.info.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.info.local_rank] if self.info.device.type == "cuda" else None)
        return torch.compile(net) if self.compile else net

    def autocast(self):
        """The context of a forward: autocast under amp=bf16/fp16 (FSDP's policy casts instead)."""
        return autocast(self.amp, self.info.device)

    def sync(self, net: torch.nn.Module, syncing: bool):
        """Gradient accumulation: reduce gradients on the last micro-batch only."""
        return contextlib.nullcontext() if syncing or not self.info.distributed else net.no_sync()

    def full_state_dict(self, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """The whole model's weights (called by every process; rank 0's result is the one to save)."""
        return model.state_dict()

    def load_full_state_dict(self, model: torch.nn.Module, sd: Dict[str, torch.Tensor]) -> None:
        check_fits(model, sd)
        model.load_state_dict(sd, strict=True)


class FSDP(Strategy):
    """`fsdp`: FSDP2 per block and root over all processes; on one process the model stays whole (there is
    nothing to shard), and its checkpoints are the same sharded folders, so a run moves between world sizes."""
    name = "fsdp"
    sharded = True

    def wrap(self, model):
        if self.grad_checkpointing:
            set_grad_checkpointing(model)
        if self.compile:
            for blk in blocks(model):
                blk.compile()  # in place, before sharding: FSDP's hooks stay outside the compiled graph
        if not self.info.distributed:
            return model
        mesh = init_device_mesh(self.info.device.type, (self.info.world_size,))
        bf16 = self.amp == "bf16"
        policy = lambda cast: (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,  # noqa
                                                    cast_forward_inputs=cast) if bf16 else MixedPrecisionPolicy())
        for blk in blocks(model):
            fully_shard(blk, mesh=mesh, mp_policy=policy(True), reshard_after_forward=self.reshard_after_forward)
        # the rest (patch embedding, tokens, norms, decoder embedding, head); the images stay fp32, so the loss's
        # norm-pix targets are computed from them as under ddp (autocast runs the root's own ops)
        fully_shard(model, mesh=mesh, mp_policy=policy(False), reshard_after_forward=self.reshard_after_forward)
        return model

    def sync(self, net, syncing):
        if self.info.distributed:
            net.set_requires_gradient_sync(syncing)
        return contextlib.nullcontext()

    def full_state_dict(self, model):
        if not self.info.distributed:
            return super().full_state_dict(model)
        return get_model_state_dict(model, options=FULL)  # all-gathered block by block; {} on ranks > 0

    def load_full_state_dict(self, model, sd):
        if not self.info.distributed:
            return super().load_full_state_dict(model, sd)
        check_fits(model, sd)
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


STRATEGIES = {"ddp": Strategy, "fsdp": FSDP}


def check_fits(model: torch.nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    """A checkpoint whose weights do not fit the model this run built -- an override (img_size, a size of the
    model) that differs from the run's own -- is one CheckpointError naming what differs, before anything is
    loaded (torch's own error is a many-line RuntimeError). An empty `sd` (a rank that receives a broadcast) passes."""
    own = model.state_dict()
    if not sd:
        return
    diff = [f"{k}: {tuple(sd[k].shape)} in the checkpoint, {tuple(v.shape)} in this run's model"
            for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    diff += [f"{k}: missing from the checkpoint" for k in own if k not in sd]
    diff += [f"{k}: in the checkpoint, not in this run's model" for k in sd if k not in own]
    if diff:
        raise CheckpointError(f"the checkpoint does not fit the model this run builds ({'; '.join(diff[:2])}"
                              f"{f'; {len(diff) - 2} more' if len(diff) > 2 else ''}): an override such as img_size "
                              f"or the model's size differs from the run's own; resume with the run's values")


def set_grad_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass (timm's own switch where the model has one)."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    else:
        raise ValueError(f"{type(model).__name__} has no activation checkpointing switch")
