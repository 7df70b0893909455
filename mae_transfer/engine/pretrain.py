"""MAE pretraining with the paper's recipe (He et al. 2021, Sec. 4 and appendix A.1)."""
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch
from timm.optim import create_optimizer_v2
from tqdm import tqdm

from .. import models
from ..data import SeededSamples, demo_photos, pretrain_transform
from ..data.images import ImageDataset
from ..models.masking import make_noise
from ..visualize import NORM_PIX_NOTE, reconstruct, save_grid
from . import trainer
from .distributed import DistInfo, barrier, cleanup
from .logger import RunLogger

_logger = logging.getLogger("mae_transfer")


@dataclass
class PretrainConfig:
    """Defaults = the paper's recipe (Table 8 of the appendix), not the official code's CLI defaults
    (which are blr 1e-3, 400 epochs and norm_pix_loss off)."""
    model: str = "mae_vit_large_patch16"
    model_kwargs: dict = field(default_factory=dict)  # e.g. depth/embed_dim for CPU-sized models
    img_size: int = 224
    mask_ratio: float = 0.75
    mask_strategy: str = "random"       # random | block | grid (paper Table 1f: random is best)
    norm_pix_loss: bool = True          # per-patch normalised targets: better features (Table 1d)
    epochs: int = 800
    warmup_epochs: int = 40
    blr: float = 1.5e-4                 # lr = blr * effective_batch_size / 256
    lr: Optional[float] = None          # absolute lr; overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    batch_size: int = 64                # per device
    effective_batch_size: int = 4096    # batch_size * accum_iter * world_size; sets accum_iter
    accum_iter: Optional[int] = None    # None: derived from effective_batch_size
    crop_scale: Tuple[float, float] = (0.2, 1.0)
    data_path: Optional[str] = None     # ImageFolder or flat folder; None: embedded demo photos
    demo_samples: int = 1024            # samples per epoch drawn from the demo photos
    num_workers: int = 10
    amp: str = "auto"                   # auto | bf16 | fp16 | none
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    output_dir: str = "output/pretrain"
    resume: str = "auto"                # auto | none | path
    save_freq: int = 20                 # keep checkpoint-<epoch>.pth every N epochs (+ the last)
    vis_freq: int = 20                  # reconstruction grid every N epochs
    max_steps: Optional[int] = None     # stop after this many optimizer steps (tests, smoke runs)


def build_data(cfg: PretrainConfig, grid, source=None):
    transform = pretrain_transform(cfg.img_size, cfg.crop_scale)
    noise = lambda g: make_noise_1(cfg, grid, g)  # noqa: E731
    if source is not None:
        return SeededSamples(source, transform, cfg.seed, extras=[noise])
    if cfg.data_path is None:
        return SeededSamples(demo_photos(), transform, cfg.seed, length=cfg.demo_samples, extras=[noise])
    return SeededSamples(ImageDataset(cfg.data_path), transform, cfg.seed, extras=[noise])


def make_noise_1(cfg: PretrainConfig, grid, g: torch.Generator) -> torch.Tensor:
    """Mask noise of one sample from its own generator (so masks do not depend on batch layout)."""
    if cfg.mask_strategy == "random":
        return torch.rand(grid[0] * grid[1], generator=g)
    torch.manual_seed(int(torch.randint(2**62, (), generator=g)))  # block/grid use the global RNG
    return make_noise(cfg.mask_strategy, 1, grid, cfg.mask_ratio)[0]


def train(cfg: PretrainConfig, info: Optional[DistInfo] = None, source=None) -> torch.nn.Module:
    """Run (or resume) pretraining; returns the trained model (every rank), checkpoints in output_dir.
    `source` (a Dataset of PIL images) replaces cfg.data_path, e.g. for in-memory arrays (bench/)."""
    info, out = trainer.start_run(cfg, info)

    model = models.create_mae(cfg.model, img_size=cfg.img_size, norm_pix_loss=cfg.norm_pix_loss, mask_strategy=cfg.mask_strategy,
                              **cfg.model_kwargs).to(info.device)
    grid = model.grid_size
    dataset = build_data(cfg, grid, source)
    loader, accum, eff, lr, steps_per_epoch = trainer.train_loader(dataset, cfg, info)

    # AdamW; no weight decay on biases, norms and the pos/cls/mask tokens (model.no_weight_decay()).
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                    **trainer.fused_adamw(info.device))
    scheduler = trainer.warmup_cosine(optimizer, cfg, steps_per_epoch)
    autocast, scaler, amp = trainer.amp_setup(cfg.amp, info.device)

    start_epoch, step = 0, 0
    resume = trainer.find_resume(out, cfg.resume)
    if resume is not None:
        start_epoch, step = trainer.load_training_state(resume, model, optimizer, scheduler, scaler)
    net = trainer.wrap_ddp(model, info)
    if cfg.compile:
        net = torch.compile(net)

    log = RunLogger(out, enabled=info.is_main)
    _logger.info("model %s (%.1fM params) | %d samples | batch %d x accum %d x %d procs = %d | lr %.3g | amp %s",
                 cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, len(dataset), cfg.batch_size, accum,
                 info.world_size, eff, lr, amp)
    vis_batch = _fixed_batch(dataset, 4)
    n_skipped = 0
    for epoch in range(start_epoch, cfg.epochs):
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        net.train()
        t0, loss_sum, n_loss = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (info.is_main and sys.stderr.isatty()),
                   dynamic_ncols=True, leave=False)
        for it, (batch, n_bad) in enumerate(bar):
            n_skipped += n_bad
            if it // accum >= steps_per_epoch:
                break  # an incomplete accumulation at the end of an epoch is dropped
            if batch is None:  # every image of this batch was unreadable
                continue
            if it % accum == 0:
                scheduler.step_update(step)
            imgs, noise = (t.to(info.device, non_blocking=True) for t in batch)
            loss_value, stepped = trainer.micro_step(
                net, lambda: net(imgs, mask_ratio=cfg.mask_ratio, noise=noise)[0], it, accum, optimizer, scaler,
                info, autocast, f"epoch {epoch}, iteration {it}", out)
            step += stepped
            loss_sum, n_loss = loss_sum + loss_value, n_loss + 1
            lr_now = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr_now:.2e}")
            if info.is_main and (it + 1) % accum == 0:
                log.scalars({"train/loss": loss_value, "train/lr": lr_now}, step)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        record = {"train_lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(1, n_loss),
                  "epoch": epoch, "skipped_images": n_skipped, "epoch_time_s": round(time.time() - t0, 2)}
        if info.is_main:
            _logger.info("epoch %d/%d  loss %.4f  lr %.3g  %.1fs%s", epoch + 1, cfg.epochs, record["train_loss"],
                         record["train_lr"], record["epoch_time_s"],
                         f"  ({n_skipped} unreadable images skipped so far)" if n_skipped else "")
            trainer.end_of_epoch_checkpoint(out, model, optimizer, scheduler, scaler, epoch, step, cfg)
            log.epoch(record)
            if (epoch + 1) % cfg.vis_freq == 0 or epoch + 1 == cfg.epochs:
                _save_recon(model, vis_batch, cfg, out / "reconstructions.png", epoch)
        barrier(info)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    log.close()
    cleanup()
    return model


def _fixed_batch(dataset: SeededSamples, n: int):
    """The same few samples every time: epoch-0 crops of the first images, with their own noise."""
    saved = dataset.epoch
    dataset.set_epoch(0)
    items = [x for x in (dataset[i] for i in range(min(len(dataset), 4 * n))) if x is not None][:n]
    dataset.set_epoch(saved)
    return torch.stack([x[0] for x in items]), torch.stack([x[1] for x in items])


def _save_recon(model, vis_batch, cfg, path: Path, epoch: int):
    imgs, noise = vis_batch
    was_training = model.training
    dev = next(model.parameters()).device
    images = reconstruct(model, imgs.to(dev), cfg.mask_ratio, noise.to(dev))
    save_grid(images, path, f"{cfg.model}, epoch {epoch + 1}, mask ratio {cfg.mask_ratio}" + NORM_PIX_NOTE * cfg.norm_pix_loss)
    model.train(was_training)
