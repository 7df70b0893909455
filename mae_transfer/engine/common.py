"""What every training recipe shares: the config fields of the trainer, run start, loaders, mixed
precision, batch arithmetic, the schedule and the optimizer flags."""
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from timm.scheduler import CosineLRScheduler

from ..data import DataError, EpochSampler, collate_skip_bad
from ..data.images import worker_threads
from ..data.order import ShardSampler
from ..data.shards import Shards
from .config import at_least, check_seed, one_of, positive, require
from .distributed import DistInfo, barrier, init_distributed
from .logger import setup_logging

_logger = logging.getLogger("mae_transfer")


@dataclass
class TrainConfig:
    """Fields every recipe has; PretrainConfig and ClassifyConfig add their own and set the
    paper's values as defaults."""
    epochs: int = 100
    warmup_epochs: int = 5
    blr: float = 1e-3                   # lr = blr * effective_batch_size / 256
    lr: Optional[float] = None          # absolute lr; overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    batch_size: int = 64                # per device
    effective_batch_size: int = 1024    # batch_size * accum_iter * world_size; sets accum_iter
    accum_iter: Optional[int] = None    # None: derived from effective_batch_size
    num_workers: int = 10               # persistent loader workers (the epoch reaches them through the sampler)
    # shards: each loader worker reads its shards forward and shuffles within this many samples (WebDataset's
    # buffer); it keeps up to 2x as many undecoded samples in memory (~110 KB each for ImageNet JPEGs)
    shuffle_window: int = 1000
    # shards from a `pipe:` command or a URL: seconds without a byte before the run stops with one error naming it
    data_timeout: float = 60.0
    amp: str = "auto"                   # auto | bf16 | fp16 | none
    device: str = "auto"
    seed: int = 0
    output_dir: str = "output"
    resume: str = "none"                # none (fresh; refuses a directory holding a run) | auto (--resume) | path
    save_freq: int = 20                 # keep checkpoint-<epoch>.pth every N epochs (+ the last)
    # checkpoint-last.pth is also written inside an epoch, every N optimizer steps and/or every M
    # minutes (an ImageNet epoch on a few GPUs is long; preemptible machines stop jobs at any time).
    # Resume continues at the exact sample. 30 min costs ~0.1 % of a ViT-L run in checkpoint writes.
    ckpt_every_steps: Optional[int] = None
    ckpt_every_minutes: Optional[float] = 30.0
    on_nonfinite: str = "stop"          # stop | rollback (to checkpoint-last, then on with the next data)
    max_rollbacks: int = 3              # rollbacks per run before stopping anyway
    max_steps: Optional[int] = None     # stop after this many optimizer steps (tests, smoke runs)
    clip_grad: Optional[float] = None   # max gradient norm (None: no clipping, the papers' recipes)
    # How the model is spread over processes (engine/strategy.py): ddp = whole model on each; fsdp = FSDP2,
    # each of N processes holds 1/N of weights, gradients and AdamW moments (ViT-H and beyond).
    strategy: str = "ddp"
    grad_checkpointing: bool = False    # recompute block activations in backward (memory for ~30 % more compute)
    reshard_after_forward: bool = True  # fsdp: free gathered blocks after forward (False: more memory, less traffic)
    compile: bool = False               # torch.compile (fsdp: each block, before sharding)

    def check(self) -> None:
        """Every value in its range, before any work starts (one ConfigError line otherwise)."""

        at_least(self, 1, "epochs", "batch_size", "effective_batch_size", "accum_iter", "save_freq",
                 "ckpt_every_steps", "max_steps")
        at_least(self, 0, "warmup_epochs", "num_workers", "max_rollbacks", "min_lr", "weight_decay", "shuffle_window")
        check_seed(self.seed)
        positive(self, "blr", "lr", "ckpt_every_minutes", "data_timeout")
        one_of(self, "amp", ("auto", "bf16", "fp16", "none"))
        one_of(self, "on_nonfinite", ("stop", "rollback"))
        one_of(self, "strategy", ("ddp", "fsdp"))
        positive(self, "clip_grad")
        require(not (self.strategy == "fsdp" and self.amp == "fp16"),
                "amp=fp16 with strategy=fsdp: use amp=bf16 (FSDP's mixed precision computes in bf16 and reduces "
                "in fp32; no loss scaling needed)")
        require(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                f"device={self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.device.startswith("cuda"):
            require(torch.cuda.is_available(), f"device={self.device}: this machine has no CUDA GPU (use auto or cpu)")


def start_run(cfg, info=None):
    """Process group, output folder and logging: the common start of every recipe (seeds: `rng.seeded`
    around what draws, never the process's global generators)."""

    cfg.check()
    info = info or init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)
    setup_logging(out, info.is_main)
    return info, out


def make_loader(dataset, batch_size: int, info: DistInfo, seed: int, num_workers: int, collate_fn=None,
                shuffle: bool = True, drop_last: bool = True):
    """Loader over an `EpochSampler` (one process with batch B*k sees exactly the samples that k processes with
    batch B see), or over a `ShardSampler` for shards (each worker reads its own shards forward); either way each
    index carries its epoch to the (persistent) workers."""

    if isinstance(getattr(dataset, "source", None), Shards):
        sampler = ShardSampler(dataset.source, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle,
                               seed=seed, drop_last=drop_last, batch_size=batch_size, num_workers=num_workers)
    else:
        sampler = EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
                               drop_last=drop_last)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn or collate_skip_bad, pin_memory=info.device.type == "cuda", drop_last=drop_last,
        persistent_workers=num_workers > 0, worker_init_fn=worker_threads if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))  # the workers' base seed: not from the global generator


def resolve_amp(mode: str, device: torch.device) -> str:
    """mode: auto | bf16 | fp16 | none. `auto` = bf16 where the device has fast bf16 (recent GPUs), fp32
    elsewhere (CPU bf16 autocast is slower than fp32 on most CPUs)."""
    if mode == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if mode not in ("bf16", "fp16", "none"):
        raise ValueError(f"amp must be auto, bf16, fp16 or none, not {mode!r}")
    return mode


def autocast(mode: str, device: torch.device):
    """The autocast context of a resolved amp mode (a null context for none)."""
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def resolve_batch(cfg, world_size: int):
    """(accum_iter, effective batch, lr): accumulation derived from cfg.effective_batch_size unless
    given; lr = blr * effective batch / 256 unless cfg.lr is set (the MAE papers' linear scaling)."""
    per_step = cfg.batch_size * world_size
    accum = cfg.accum_iter or max(1, round(cfg.effective_batch_size / per_step))
    eff = per_step * accum
    return accum, eff, (cfg.lr if cfg.lr is not None else cfg.blr * eff / 256)


def train_loader(dataset, cfg, info: DistInfo):
    """The training loader and its arithmetic: (loader, accum_iter, effective batch, lr, optimizer
    steps per epoch); an epoch too small for one accumulation is a clear error."""

    accum, eff, lr = resolve_batch(cfg, info.world_size)
    loader = make_loader(dataset, cfg.batch_size, info, cfg.seed, cfg.num_workers)
    n_batches = loader.sampler.full_length() // cfg.batch_size
    if n_batches < accum:
        raise DataError(f"{len(dataset)} training images make {n_batches} full batches of {cfg.batch_size}, "
                        f"fewer than accum_iter={accum}; lower batch_size / effective_batch_size")
    return loader, accum, eff, lr, n_batches // accum  # an incomplete accumulation at the end is dropped


def warmup_cosine(optimizer, cfg, steps_per_epoch: int):
    """Linear warm-up from 0, then half-cycle cosine to cfg.min_lr, updated every optimizer step
    (timm's scheduler; it applies each group's `lr_scale`, i.e. layer decay)."""

    return CosineLRScheduler(
        optimizer, t_initial=max(1, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch), lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_epochs * steps_per_epoch, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def fused_adamw(device: torch.device) -> dict:
    """torch's fused AdamW (one kernel for all parameters; ~4x faster steps than foreach on a CPU
    for 100M parameters) wherever it exists; timm's create_optimizer_v2 passes it through."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}

