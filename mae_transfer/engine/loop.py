"""The one training loop of every recipe (pretraining, fine-tuning, linear probing).

A recipe builds a `Run` and supplies `loss_fn(batch) -> loss`; `fit` does the rest: epochs,
gradient accumulation as an inner micro-batch loop, the lr schedule per optimizer step, mid-epoch
and end-of-epoch checkpoints, resume at the exact sample, the non-finite-loss policy and the logs.
"""
import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from tqdm import tqdm

from ..errors import RunFailed
from ..rng import seeded
from . import state as ckpt
from .distributed import DistInfo, all_reduce_sum, barrier
from .logger import RunLogger
from .state import TrainState
from .trainer import micro_batch_seed

_logger = logging.getLogger("mae_transfer")


class NonFiniteLoss(RunFailed):
    pass


@dataclass(kw_only=True)
class Run:
    """What a recipe builds and hands to `fit` (by keyword: `Run(cfg=..., model=..., ...)`)."""
    cfg: Any
    info: DistInfo
    out: Path
    model: torch.nn.Module               # the bare model (checkpoints, evaluation)
    net: torch.nn.Module                 # what the forward runs through (DDP / compiled)
    loader: torch.utils.data.DataLoader  # over an EpochSampler
    optimizer: torch.optim.Optimizer
    scheduler: Any                       # timm scheduler: step_update(step)
    scaler: Optional[torch.amp.GradScaler]
    autocast: Callable
    accum: int
    steps_per_epoch: int
    log: RunLogger
    train_mode: Optional[Callable[[], None]] = None  # default net.train(); linear probing keeps the trunk in eval
    state: TrainState = field(default_factory=TrainState)


def _reduce(loss: torch.Tensor, flag: bool, info: DistInfo):
    """(mean loss over processes, whether any process raised `flag`): one host sync per step."""
    t = torch.stack([loss.detach().double(), torch.tensor(float(flag), dtype=torch.float64, device=loss.device)])
    if info.distributed:
        torch.distributed.all_reduce(t)
    loss_value, flags = t.tolist()
    return loss_value / info.world_size, flags > 0


def _nonfinite(run: Run, loss_value: float):
    """Stop with the last good checkpoint's path, or (on_nonfinite=rollback) reload it and go on
    with the next data, at most cfg.max_rollbacks times."""
    cfg, st = run.cfg, run.state
    last = run.out / "checkpoint-last.pth"
    where = f"epoch {st.epoch}, step {st.step}"
    if cfg.on_nonfinite == "rollback" and st.rollbacks < cfg.max_rollbacks and last.exists():
        saved = ckpt.load_checkpoint(last, run)
        st.step, st.rollbacks = saved.step, st.rollbacks + 1
        _logger.warning("loss is %s at %s: rolled back to %s (step %d) and continuing with the next data "
                        "(rollback %d of at most %d)", loss_value, where, last, st.step, st.rollbacks,
                        cfg.max_rollbacks)
        run.log.event({"event": "rollback", "loss": str(loss_value), "epoch": st.epoch, "batch": st.batch,
                       "to_step": st.step})
        return
    raise NonFiniteLoss(f"loss is {loss_value} at {where}; stopping. Last good checkpoint: "
                        f"{last if last.exists() else 'none yet'} (lower the lr, use amp=bf16 instead of fp16, "
                        f"or on_nonfinite=rollback)")


def train_one_epoch(run: Run, loss_fn: Callable[[list], torch.Tensor]) -> bool:
    """Run optimizer steps of `run.state.epoch` from where its state stands; True when the epoch
    is complete (False when max_steps stopped it)."""
    cfg, st, info = run.cfg, run.state, run.info
    run.loader.sampler.set_epoch(st.epoch, start=st.batch * cfg.batch_size)
    (run.train_mode or run.net.train)()
    batches = iter(run.loader)
    bar = tqdm(total=run.steps_per_epoch, initial=st.batch // run.accum, desc=f"epoch {st.epoch}", leave=False,
               dynamic_ncols=True, disable=not (info.is_main and sys.stderr.isatty()))
    last_save = time.monotonic()
    while st.batch // run.accum < run.steps_per_epoch:
        if cfg.max_steps is not None and st.step >= cfg.max_steps:
            bar.close()
            return False
        run.scheduler.step_update(st.step)
        losses = []
        for micro in range(run.accum):  # gradient accumulation; DDP syncs gradients on the last one only
            batch, n_bad = next(batches)
            st.n_bad += n_bad
            batch = [t.to(info.device, non_blocking=True) for t in batch]
            syncing = not info.distributed or micro == run.accum - 1
            with contextlib.nullcontext() if syncing else run.net.no_sync(), \
                    seeded(micro_batch_seed(cfg.seed, st.epoch, st.batch, info.rank)):
                with run.autocast():
                    loss = loss_fn(batch)
                (run.scaler.scale(loss / run.accum) if run.scaler else loss / run.accum).backward()
            losses.append(loss.detach())
            st.batch += 1
        minutes = cfg.ckpt_every_minutes
        late = minutes is not None and time.monotonic() - last_save > 60 * minutes
        loss_value, late = _reduce(torch.stack(losses).float().mean(), late, info)
        if not math.isfinite(loss_value):
            run.optimizer.zero_grad(set_to_none=True)
            _nonfinite(run, loss_value)
            continue
        if run.scaler:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.loss_sum, st.n_loss = st.loss_sum + loss_value, st.n_loss + 1
        lr = peak_lr(run.optimizer)
        bar.update()
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        run.log.scalars({"train/loss": loss_value, "train/lr": lr}, st.step)
        every = cfg.ckpt_every_steps
        if (late or (every and st.step % every == 0)) and st.batch // run.accum < run.steps_per_epoch:
            if info.is_main:
                ckpt.save_checkpoint(run)
            barrier(info)
            last_save = time.monotonic()
    bar.close()
    return True


def peak_lr(optimizer) -> float:
    """The largest group lr: the base lr of a layer-decayed run (the head's), not layer 0's."""
    return max(g["lr"] for g in optimizer.param_groups)


def fit(run: Run, loss_fn: Callable[[list], torch.Tensor],
        after_epoch: Optional[Callable[[int], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Resume if asked, then train to cfg.epochs. `after_epoch(epoch)` runs on every process after
    each finished epoch (evaluation, pictures) and returns items for the epoch's log record.
    Returns the last epoch's record ({} when nothing was left to train)."""
    cfg, info = run.cfg, run.info
    ckpt.resume(run)
    st, record = run.state, {}
    while st.epoch < cfg.epochs:
        t0 = time.time()
        finished = train_one_epoch(run, loss_fn)
        if not finished:  # max_steps: keep the exact position
            if info.is_main:
                ckpt.save_checkpoint(run)
            break
        epoch = st.epoch
        n_bad = all_reduce_sum(st.n_bad, info)
        record = {"epoch": epoch, "train_loss": st.loss_sum / max(1, st.n_loss), "train_lr": peak_lr(run.optimizer),
                  "skipped_images": n_bad, "epoch_time_s": round(time.time() - t0, 2)}
        record.update(after_epoch(epoch) if after_epoch else {})
        st.next_epoch()
        if info.is_main:
            keep = (epoch + 1) % cfg.save_freq == 0 or epoch + 1 == cfg.epochs
            ckpt.save_checkpoint(run, extra_names=(f"checkpoint-{epoch}.pth",) if keep else ())
            run.log.epoch(record)
            line = [f"epoch {epoch + 1}/{cfg.epochs}", f"loss {record['train_loss']:.4f}",
                    f"lr {record['train_lr']:.3g}"]
            line += [f"{k} {v:.4g}" for k, v in record.items() if k.startswith("test_")]
            line += [f"{record['epoch_time_s']:.1f}s"] + ([f"({n_bad} unreadable images replaced)"] if n_bad else [])
            _logger.info("  ".join(line))
        barrier(info)
    run.log.close()
    return record

