"""MAE pretraining with the paper's recipe (He et al. 2021, Sec. 4 and appendix A.1)."""
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import torch
from timm.optim import create_optimizer_v2

from .. import models
from ..data import SeededSamples, collate_skip_bad, demo_photos, pretrain_transform
from ..data.device import DeviceCropFlip
from ..data.fast import FastCropFlip, normalize_on_device
from ..data.sources import image_source
from ..models.mae import load_mae
from ..models.masking import make_noise
from ..rng import seeded
from ..visualize import NORM_PIX_NOTE, reconstruct, save_grid
from . import common
from .common import TrainConfig
from .config import at_least, one_of, require
from .distributed import DistInfo, cleanup
from .trainer import Trainer

_logger = logging.getLogger("mae_transfer")


@dataclass
class PretrainConfig(TrainConfig):
    """Defaults = the paper's recipe (Table 8 of the appendix), not the official code's CLI defaults
    (which are blr 1e-3, 400 epochs and norm_pix_loss off). Shared fields: common.TrainConfig."""
    model: str = "mae_vit_large_patch16"
    model_kwargs: dict = field(default_factory=dict)  # e.g. depth/embed_dim for CPU-sized models
    img_size: int = 224
    mask_ratio: float = 0.75
    mask_strategy: str = "random"       # random | block | grid (paper Table 1f: random is best)
    norm_pix_loss: bool = True          # per-patch normalised targets: better features (Table 1d)
    epochs: int = 800
    warmup_epochs: int = 40
    blr: float = 1.5e-4                 # lr = blr * effective_batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    batch_size: int = 64                # per device
    effective_batch_size: int = 4096    # 64 per GPU x 64 GPUs in the paper
    crop_scale: Tuple[float, float] = (0.2, 1.0)
    # the input pipeline (data/fast.py): fast = the reference's crops and flips at >= 2x its images/s per core,
    # uint8 batches normalised on the device; torchvision = the reference; device = JPEGs decoded on the GPU
    pipeline: str = "fast"
    data_path: Optional[str] = None     # folder of images, or shards (data/sources.py); None: the demo photos
    demo_samples: int = 1024            # samples per epoch drawn from the demo photos
    output_dir: str = "output/pretrain"
    vis_freq: int = 20                  # reconstruction grid every N epochs

    def check(self) -> None:
        super().check()
        require(0 < self.mask_ratio < 1, f"mask_ratio={self.mask_ratio}: must be inside (0, 1)")
        one_of(self, "mask_strategy", ("random", "block", "grid"))
        one_of(self, "pipeline", ("fast", "torchvision", "device"))
        at_least(self, 1, "img_size", "demo_samples", "vis_freq")
        lo, hi = self.crop_scale
        require(0 < lo <= hi <= 1, f"crop_scale={self.crop_scale}: expected 0 < min <= max <= 1")
        require(all(0 <= b < 1 for b in self.betas), f"betas={self.betas}: each must be in [0, 1)")


def build_data(cfg: PretrainConfig, grid, source=None):
    # each draws from torch's generator only (the crop box, then the flip)
    transform = {"fast": FastCropFlip, "device": DeviceCropFlip,
                 "torchvision": pretrain_transform}[cfg.pipeline](cfg.img_size, cfg.crop_scale)
    noise = lambda g: make_noise_1(cfg, grid, g)  # noqa: E731
    length = None
    if source is None and cfg.data_path is None:  # the demo photos, sampled with replacement
        source, length = demo_photos(), cfg.demo_samples
    elif source is None:
        source = image_source(cfg.data_path, window=cfg.shuffle_window, timeout=cfg.data_timeout)
    return SeededSamples(source, transform, cfg.seed, length=length, extras=[noise], python_numpy=False)


def make_noise_1(cfg: PretrainConfig, grid, g: torch.Generator) -> torch.Tensor:
    """Mask noise of one sample from its own generator (so masks do not depend on batch layout)."""
    return make_noise(cfg.mask_strategy, 1, grid, cfg.mask_ratio, generator=g)[0]


def train(cfg: PretrainConfig, info: Optional[DistInfo] = None, source=None, metrics: Optional[dict] = None
          ) -> torch.nn.Module:
    """Run (or resume) pretraining; returns the trained model (every rank), checkpoints in output_dir;
    `metrics` (a dict) receives the last epoch's train loss.
    `source` (a Dataset of PIL images) replaces cfg.data_path, e.g. for in-memory arrays (bench/)."""
    info, out = common.start_run(cfg, info)

    with seeded(cfg.seed):  # the initial weights follow from the seed; the process's generators are left alone
        model = models.create_mae(cfg.model, img_size=cfg.img_size, norm_pix_loss=cfg.norm_pix_loss,
                                  mask_strategy=cfg.mask_strategy, **cfg.model_kwargs).to(info.device)
    dataset = build_data(cfg, model.grid_size, source)

    def optimizer(model, lr):  # AdamW; no weight decay on biases, norms and the cls/mask tokens (no_weight_decay())
        return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                   **common.fused_adamw(info.device))

    def loss_fn(batch):
        imgs, noise = batch  # [N, 3, H, W] (uint8 from pipeline=fast / device), [N, L]
        return trainer.net(normalize_on_device(imgs), mask_ratio=cfg.mask_ratio, noise=noise)[0]

    trainer = Trainer(cfg=cfg, info=info, out=out, model=model, dataset=dataset, optimizer=optimizer, loss_fn=loss_fn)
    n_params = sum(p.numel() for p in model.parameters())
    _logger.info("model %s (%.1fM params) | %d samples | %s", cfg.model, n_params / 1e6, len(dataset),
                 trainer.describe())
    vis_batch = _fixed_batch(dataset, 4)

    def after_epoch(epoch):
        if (epoch + 1) % cfg.vis_freq == 0 or epoch + 1 == cfg.epochs:  # every process: sharded weights gather
            _save_recon(model, vis_batch, cfg, out / "reconstructions.png", epoch, info.is_main)
        return {}

    record = trainer.fit(after_epoch)
    if metrics is not None and "train_loss" in record:
        metrics["train_loss"] = record["train_loss"]
    cleanup(info)
    return model


def _fixed_batch(dataset: SeededSamples, n: int):
    """The same few samples every time: epoch-0 crops of the first images, with their own noise."""
    items = [dataset[(0, i)][0] for i in range(min(len(dataset), n))]
    imgs = collate_skip_bad([(x, 0) for x in items])[0][0]
    return normalize_on_device(imgs.to("cpu")), torch.stack([x[1] for x in items])


def _save_recon(model, vis_batch, cfg, path: Path, epoch: int, write: bool):
    imgs, noise = vis_batch
    was_training = model.training
    dev = next(model.parameters()).device
    images = reconstruct(model, imgs.to(dev), cfg.mask_ratio, noise.to(dev))
    if write:
        title = f"{cfg.model}, epoch {epoch + 1}, mask ratio {cfg.mask_ratio}" + NORM_PIX_NOTE * cfg.norm_pix_loss
        save_grid(images, path, title)
    model.train(was_training)


@torch.no_grad()
def evaluate_checkpoint(cfg: PretrainConfig, checkpoint) -> dict:
    """Mean masked-patch loss of the MAE in `checkpoint` (rebuilt from the architecture it records) over
    one pass of cfg's data at cfg.mask_ratio, masks seeded per sample as in training (epoch 0)."""

    model = load_mae(checkpoint)
    size = model.patch_embed.img_size[0]
    if size != cfg.img_size:  # the masks and crops follow the model the checkpoint holds
        _logger.info("img_size=%d as the checkpoint's model (the config says %d)", size, cfg.img_size)
        cfg = dataclasses.replace(cfg, img_size=size)
    info = DistInfo()
    loader = common.make_loader(build_data(cfg, model.grid_size), cfg.batch_size, info, cfg.seed, cfg.num_workers,
                                 shuffle=False, drop_last=False)
    loader.sampler.set_epoch(0)
    total, n = 0.0, 0
    for batch, _bad in loader:  # unreadable images are replaced by readable ones, as in training
        imgs, noise = batch
        imgs = normalize_on_device(imgs.to("cpu"))
        total += float(model.eval()(imgs, mask_ratio=cfg.mask_ratio, noise=noise)[0]) * len(imgs)
        n += len(imgs)
    return {"loss": total / max(1, n), "images": n}
