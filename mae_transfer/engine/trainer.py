"""The one trainer of every recipe (pretraining, fine-tuning, linear probing).

A recipe builds the model, the data, the optimizer's parameter groups and the loss, then

    trainer = Trainer(cfg=cfg, info=info, out=out, model=model, dataset=train_set,
                      optimizer=lambda model, lr: create_optimizer_v2(model, "adamw", lr=lr, ...),
                      loss_fn=lambda batch: model_loss(...))
    trainer.fit(after_epoch=evaluate)

and the trainer owns the rest: the loader and its batch arithmetic, the parallel strategy (ddp / fsdp),
mixed precision, the lr schedule per optimizer step, gradient accumulation and clipping, mid-epoch and
end-of-epoch checkpoints, resume at the exact sample (at any world size under fsdp), the non-finite-loss
policy and the logs. Random draws of the main process (drop path, Mixup/CutMix) run inside `rng.seeded`
with a seed from (seed, epoch, micro-batch, rank); the process's own generators are never touched.
"""
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from tqdm import tqdm

from ..errors import RunFailed
from ..rng import derive_seed, seeded
from . import state as ckpt
from .common import resolve_amp, train_loader, warmup_cosine
from .distributed import DistInfo, all_reduce_sum, barrier
from .logger import RunLogger
from .state import TrainState
from .strategy import STRATEGIES

_logger = logging.getLogger("mae_transfer")


class NonFiniteLoss(RunFailed):
    pass


class Trainer:
    def __init__(self, *, cfg, info: DistInfo, out: Path, model: torch.nn.Module, dataset,
                 optimizer: Callable[[torch.nn.Module, float], torch.optim.Optimizer],
                 loss_fn: Callable[[list], torch.Tensor], train_mode: Optional[Callable[[], None]] = None):
        """`optimizer(model, lr)` builds the optimizer once the strategy has placed the model (FSDP replaces
        its parameters by shards); `train_mode()` replaces `net.train()` (linear probing keeps the trunk in
        eval); `loss_fn(batch)` runs the forward through `trainer.net`."""
        self.cfg, self.info, self.out, self.model, self.loss_fn = cfg, info, out, model, loss_fn
        self.loader, self.accum, self.eff, self.lr, self.steps_per_epoch = train_loader(dataset, cfg, info)
        self.amp = resolve_amp(cfg.amp, info.device)
        self.scaler = torch.amp.GradScaler(info.device.type) if self.amp == "fp16" else None
        self.strategy = STRATEGIES[cfg.strategy](info, self.amp, cfg.compile, cfg.grad_checkpointing,
                                                 cfg.reshard_after_forward)
        self.net = self.strategy.wrap(model)
        self.optimizer = optimizer(model, self.lr)
        self.scheduler = warmup_cosine(self.optimizer, cfg, self.steps_per_epoch)
        self.train_mode = train_mode or self.net.train
        # running statistics (linear probing's BatchNorm) are each process's own: averaged after every step, so the
        # evaluation, the checkpoint and a resumed run at any world size all see the same ones
        self.float_buffers = [b for b in model.buffers() if b.is_floating_point()] if info.distributed else []
        self.log = RunLogger(out, enabled=info.is_main)
        self.state = TrainState()

    def describe(self) -> str:
        return (f"batch {self.cfg.batch_size} x accum {self.accum} x {self.info.world_size} procs = {self.eff} | "
                f"lr {self.lr:.3g} | amp {self.amp} | {self.strategy.name}")

    # ------------------------------------------------------------------------------------------ epochs
    def fit(self, after_epoch: Optional[Callable[[int], Dict[str, Any]]] = None) -> Dict[str, Any]:
        """Resume if asked, then train to cfg.epochs. `after_epoch(epoch)` runs on every process after
        each finished epoch (evaluation, pictures) and returns items for the epoch's log record.
        Returns the last epoch's record ({} when nothing was left to train)."""
        cfg, info = self.cfg, self.info
        ckpt.resume(self)
        st, record = self.state, {}
        while st.epoch < cfg.epochs:
            t0 = time.time()
            if not self.train_one_epoch():  # max_steps: keep the exact position
                ckpt.save_checkpoint(self)
                break
            epoch = st.epoch
            n_bad = all_reduce_sum(st.n_bad, info)
            record = {"epoch": epoch, "train_loss": st.loss_sum / max(1, st.n_loss),
                      "train_lr": peak_lr(self.optimizer), "skipped_images": n_bad,
                      "epoch_time_s": round(time.time() - t0, 2)}
            record.update(after_epoch(epoch) if after_epoch else {})
            st.next_epoch()
            keep = (epoch + 1) % cfg.save_freq == 0 or epoch + 1 == cfg.epochs
            ckpt.save_checkpoint(self, extra_names=(f"checkpoint-{epoch}.pth",) if keep else ())
            if info.is_main:
                self.log.epoch(record)
                _logger.info(_epoch_line(record, cfg.epochs, n_bad))
            barrier(info)
        self.log.close()
        return record

    def train_one_epoch(self) -> bool:
        """Optimizer steps of `state.epoch` from where the state stands; True when the epoch is complete
        (False when max_steps stopped it)."""
        cfg, st, info = self.cfg, self.state, self.info
        st.segments = self.loader.sampler.set_epoch(st.epoch, start=st.batch * cfg.batch_size, segments=st.segments)
        self.train_mode()
        batches = iter(self.loader)
        bar = tqdm(total=self.steps_per_epoch, initial=st.batch // self.accum, desc=f"epoch {st.epoch}",
                   leave=False, dynamic_ncols=True, disable=not (info.is_main and sys.stderr.isatty()))
        last_save = time.monotonic()
        while st.batch // self.accum < self.steps_per_epoch:
            if cfg.max_steps is not None and st.step >= cfg.max_steps:
                bar.close()
                return False
            self.scheduler.step_update(st.step)
            losses = []
            for micro in range(self.accum):  # gradient accumulation: gradients reduced on the last one only
                batch, n_bad = next(batches)
                st.n_bad += n_bad
                batch = [t.to(info.device, non_blocking=True) for t in batch]
                with self.strategy.sync(self.net, micro == self.accum - 1), \
                        seeded(derive_seed("micro_batch", cfg.seed, st.epoch, st.batch, info.rank)):
                    with self.strategy.autocast():
                        loss = self.loss_fn(batch)
                    (self.scaler.scale(loss / self.accum) if self.scaler else loss / self.accum).backward()
                losses.append(loss.detach())
                st.batch += 1
            minutes = cfg.ckpt_every_minutes
            late = minutes is not None and time.monotonic() - last_save > 60 * minutes
            loss_value, late = _reduce(torch.stack(losses).float().mean(), late, info)
            if not math.isfinite(loss_value):
                self.optimizer.zero_grad(set_to_none=True)
                self._nonfinite(loss_value)
                continue
            self._step()
            st.step += 1
            st.loss_sum, st.n_loss = st.loss_sum + loss_value, st.n_loss + 1
            lr = peak_lr(self.optimizer)
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            self.log.scalars({"train/loss": loss_value, "train/lr": lr}, st.step)
            every = cfg.ckpt_every_steps
            if (late or (every and st.step % every == 0)) and st.batch // self.accum < self.steps_per_epoch:
                ckpt.save_checkpoint(self)
                last_save = time.monotonic()
        bar.close()
        return True

    def _step(self):
        """Unscale (fp16), clip (cfg.clip_grad: the norm over all shards under fsdp), step, clear."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                           self.cfg.clip_grad)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for b in self.float_buffers:
            torch.distributed.all_reduce(b)
            b.div_(self.info.world_size)

    def _nonfinite(self, loss_value: float):
        """Stop with the last good checkpoint's path, or (on_nonfinite=rollback) reload it and go on
        with the next data, at most cfg.max_rollbacks times."""
        cfg, st = self.cfg, self.state
        last = self.out / "checkpoint-last.pth"
        where = f"epoch {st.epoch}, step {st.step}"
        if cfg.on_nonfinite == "rollback" and st.rollbacks < cfg.max_rollbacks and last.exists():
            saved = ckpt.load_checkpoint(last, self)
            st.step, st.rollbacks = saved.step, st.rollbacks + 1
            _logger.warning("loss is %s at %s: rolled back to %s (step %d) and continuing with the next data "
                            "(rollback %d of at most %d)", loss_value, where, last, st.step, st.rollbacks,
                            cfg.max_rollbacks)
            self.log.event({"event": "rollback", "loss": str(loss_value), "epoch": st.epoch, "batch": st.batch,
                            "to_step": st.step})
            return
        raise NonFiniteLoss(f"loss is {loss_value} at {where}; stopping. Last good checkpoint: "
                            f"{last if last.exists() else 'none yet'} (lower the lr, use amp=bf16 instead of fp16, "
                            f"or on_nonfinite=rollback)")


def _reduce(loss: torch.Tensor, flag: bool, info: DistInfo):
    """(mean loss over processes, whether any process raised `flag`): one host sync per step."""
    t = torch.stack([loss.detach().double(), torch.tensor(float(flag), dtype=torch.float64, device=loss.device)])
    if info.distributed:
        torch.distributed.all_reduce(t)
    loss_value, flags = t.tolist()
    return loss_value / info.world_size, flags > 0


def _epoch_line(record: dict, epochs: int, n_bad: int) -> str:
    line = [f"epoch {record['epoch'] + 1}/{epochs}", f"loss {record['train_loss']:.4f}",
            f"lr {record['train_lr']:.3g}"]
    line += [f"{k} {v:.4g}" for k, v in record.items() if k.startswith("test_")]
    line += [f"{record['epoch_time_s']:.1f}s"] + ([f"({n_bad} unreadable images replaced)"] if n_bad else [])
    return "  ".join(line)


def peak_lr(optimizer) -> float:
    """The largest group lr: the base lr of a layer-decayed run (the head's), not layer 0's."""
    return max(g["lr"] for g in optimizer.param_groups)
