"""Pieces every training recipe shares: loaders, mixed precision, checkpoints with RNG state,
auto-resume, and the non-finite-loss guard."""
import contextlib
import dataclasses
import logging
import math
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import checkpoints
from .distributed import DistInfo

_logger = logging.getLogger("mae_transfer")


class NonFiniteLoss(RuntimeError):
    pass


def start_run(cfg, info=None):
    """Process group, output folder, logging and seeds: the common start of every recipe."""
    from .distributed import barrier, init_distributed
    from .logger import setup_logging

    info = info or init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)
    setup_logging(out, info.is_main)
    seed_everything(cfg.seed)
    return info, out


def wrap_ddp(model, info: DistInfo):
    if not info.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


def end_of_epoch_checkpoint(out: Path, model, optimizer, scheduler, scaler, epoch: int, step: int, cfg):
    """checkpoint-last every epoch; checkpoint-<epoch> every cfg.save_freq epochs and at the end."""
    keep = (f"checkpoint-{epoch}.pth",) if (epoch + 1) % cfg.save_freq == 0 or epoch + 1 == cfg.epochs else ()
    return save_checkpoint(out, model, optimizer, scheduler, scaler, epoch, step, cfg, extra_names=keep)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int, info: DistInfo, seed: int, num_workers: int, collate_fn=None,
                shuffle: bool = True, drop_last: bool = True):
    """A DistributedSampler even for one process, so that one process with batch B*k sees exactly the
    samples that k processes with batch B see (the permutation depends on seed + epoch only)."""
    from .. data.images import worker_threads

    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
        pin_memory=info.device.type == "cuda", drop_last=drop_last, persistent_workers=num_workers > 0,
        worker_init_fn=worker_threads if num_workers > 0 else None)


def amp_setup(mode: str, device: torch.device):
    """mode: auto | bf16 | fp16 | none. `auto` = bf16 autocast where the device has fast bf16
    (recent GPUs), fp32 elsewhere (CPU bf16 autocast is slower than fp32 on most CPUs)."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if mode == "none":
        return contextlib.nullcontext, None, mode
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    if dtype is None:
        raise ValueError(f"amp must be auto, bf16, fp16 or none, not {mode!r}")
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, mode


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
    from ..data import DataError, collate_skip_bad

    accum, eff, lr = resolve_batch(cfg, info.world_size)
    loader = make_loader(dataset, cfg.batch_size, info, cfg.seed, cfg.num_workers, collate_skip_bad)
    if len(loader) < accum:
        raise DataError(f"{len(dataset)} training images make {len(loader)} full batches of {cfg.batch_size}, "
                        f"fewer than accum_iter={accum}; lower batch_size / effective_batch_size")
    return loader, accum, eff, lr, len(loader) // accum


def warmup_cosine(optimizer, cfg, steps_per_epoch: int):
    """Linear warm-up from 0, then half-cycle cosine to cfg.min_lr, updated every optimizer step
    (timm's scheduler; it applies each group's `lr_scale`, i.e. layer decay)."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(
        optimizer, t_initial=max(1, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch), lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_epochs * steps_per_epoch, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def micro_step(net, compute_loss, it: int, accum: int, optimizer, scaler, info: DistInfo, autocast, where: str,
               output_dir: Path):
    """One micro-batch: forward, the non-finite guard, scaled backward (without DDP gradient sync
    until the last micro-batch of an accumulation), and the optimizer step every `accum`
    micro-batches. Returns (loss averaged over processes, whether the optimizer stepped)."""
    from .distributed import all_reduce_mean

    last_micro = (it + 1) % accum == 0
    with net.no_sync() if info.distributed and not last_micro else contextlib.nullcontext():
        with autocast():
            loss = compute_loss()
        loss_value = all_reduce_mean(loss.item(), info)
        if not math.isfinite(loss_value):
            last = Path(output_dir) / "checkpoint-last.pth"
            raise NonFiniteLoss(f"loss is {loss_value} at {where}; stopping. Last good checkpoint: "
                                f"{last if last.exists() else 'none yet'} (lower the lr, or use amp=bf16 instead of fp16)")
        (scaler.scale(loss / accum) if scaler else loss / accum).backward()
    if last_micro:
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss_value, last_micro


def fused_adamw(device: torch.device) -> dict:
    """torch's fused AdamW (one kernel for all parameters; ~4x faster steps than foreach on a CPU
    for 100M parameters) wherever it exists; timm's create_optimizer_v2 passes it through."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    """Numpy/python RNG states as plain lists so that `weights_only=True` can read them back."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def save_checkpoint(output_dir: Path, model, optimizer, scheduler, scaler, epoch: int, step: int, cfg,
                    extra_names=(), **extra) -> Path:
    """Official layout (`model`, `optimizer`, `epoch`, `scaler`, `args`) plus `scheduler`, `step` and
    `rng`, written atomically to `checkpoint-last.pth` and to each of `extra_names`."""
    st = rng_state()
    st["python"], st["numpy"] = _plain(st["python"]), _plain(st["numpy"])
    obj = {"model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
           "step": step, "scheduler": scheduler.state_dict() if scheduler is not None else None,
           "args": dataclasses.asdict(cfg), "rng": st, **extra}
    if scaler is not None:
        obj["scaler"] = scaler.state_dict()
    last = checkpoints.save(Path(output_dir) / "checkpoint-last.pth", obj)
    for name in extra_names:
        checkpoints.save(Path(output_dir) / name, obj)
    return last


def find_resume(output_dir: Path, resume: str) -> Optional[Path]:
    """`auto`: the run's own checkpoint-last if present; '' / 'none': start fresh; else a path."""
    if resume in ("", "none", None):
        return None
    if resume == "auto":
        p = Path(output_dir) / "checkpoint-last.pth"
        return p if p.is_file() else None
    return Path(resume)


def load_training_state(path: Path, model, optimizer, scheduler, scaler):
    obj = checkpoints.load_file(path)
    unwrap_model(model).load_state_dict(obj["model"], strict=True)
    optimizer.load_state_dict(obj["optimizer"])
    if scheduler is not None and obj.get("scheduler") is not None:
        scheduler.load_state_dict(obj["scheduler"])
    if scaler is not None and "scaler" in obj:
        scaler.load_state_dict(obj["scaler"])
    if "rng" in obj:
        st = obj["rng"]
        py = st["python"]
        st["python"] = (py[0], tuple(py[1].tolist() if torch.is_tensor(py[1]) else py[1]), py[2])
        npy = st["numpy"]
        st["numpy"] = (npy[0], npy[1].numpy() if torch.is_tensor(npy[1]) else npy[1], *npy[2:])
        set_rng_state(st)
    _logger.info("resumed from %s (epoch %d done, step %d)", path, obj["epoch"], obj.get("step", 0))
    return obj["epoch"] + 1, obj.get("step", 0)


def unwrap_model(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
