"""End-to-end fine-tuning, partial fine-tuning and linear probing (MAE paper Sec. 4, appendix A.2-A.3)."""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import Lars, create_optimizer_v2
from timm.utils import accuracy
from torchvision import transforms

from .. import checkpoints, models
from ..data import IMAGENET_MEAN, IMAGENET_STD, DataError, SeededSamples
from ..data.compat import patch_timm_posterize
from ..data.fast import FastCropFlip, FastThen, TimmCropFlip, normalize_on_device
from ..data.shards import Shards
from ..data.sources import labelled_source
from ..models.sizes import ENCODERS
from ..rng import seeded
from . import common
from .common import TrainConfig
from .config import ConfigError, at_least, one_of, positive, require
from .distributed import DistInfo, cleanup
from .logger import log_lr_table
from .trainer import Trainer

_logger = logging.getLogger("mae_transfer")
CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop's default (torchvision's and timm's), as the official recipes use it


@dataclass
class ClassifyConfig(TrainConfig):
    """Defaults: ViT-B end-to-end fine-tuning (appendix Table 9); configs/finetune and
    configs/linprobe hold the per-size presets. Shared fields: common.TrainConfig."""
    mode: str = "finetune"              # finetune | linprobe
    model: str = "vit_base_patch16"
    model_kwargs: dict = field(default_factory=dict)  # e.g. depth/embed_dim for CPU-sized models
    finetune: Optional[str] = None      # pretrained checkpoint, any format
    finetune_last_k: Optional[int] = None  # partial fine-tuning: train only the last K blocks (+ head)
    num_classes: int = 1000
    img_size: int = 224
    global_pool: bool = True            # fine-tuning: avg pool + fc_norm; linear probe: cls token
    epochs: int = 100
    warmup_epochs: int = 5
    blr: float = 5e-4                   # lr = blr * effective_batch_size / 256
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    drop_path: float = 0.1
    batch_size: int = 32                # per device
    effective_batch_size: int = 1024
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    aa: Optional[str] = "rand-m9-mstd0.5-inc1"  # RandAugment
    reprob: float = 0.25                # random erasing
    # the training input pipeline (data/fast.py): fast = the reference's crop box and flip, decoded and resized
    # faster (bench/data_speed.py), then the same RandAugment and erasing; torchvision = the reference
    pipeline: str = "fast"
    head_init_std: float = 2e-5         # trunc_normal std of the fresh head (0.01 for linear probing)
    data_path: Optional[str] = None     # <data_path>/{train,val}: class folders, or shards with labels (.cls)
    output_dir: str = "output/finetune"
    save_freq: int = 10
    eval_freq: int = 1                  # evaluate every N epochs (and after the last)
    eval_only: Optional[str] = None     # evaluate this fine-tuned checkpoint and exit

    def check(self) -> None:
        super().check()
        one_of(self, "mode", ("finetune", "linprobe"))
        one_of(self, "pipeline", ("fast", "torchvision"))
        at_least(self, 1, "num_classes", "img_size", "eval_freq")
        at_least(self, 0, "finetune_last_k", "mixup", "cutmix")
        positive(self, "head_init_std")
        depth = self.model_kwargs.get("depth") or _registered_depth(self.model)
        if self.finetune_last_k is not None and depth:
            require(self.finetune_last_k <= depth, f"finetune_last_k={self.finetune_last_k}: {self.model} has "
                    f"{depth} blocks")
        require(self.mode == "linprobe" or not (self.mixup or self.cutmix) or self.batch_size % 2 == 0,
                f"batch_size={self.batch_size}: Mixup / CutMix mix each image with its mirror in the batch, so the "
                f"batch per device must be even (or mixup=0 cutmix=0)")
        for name, lo, hi in (("smoothing", 0, 1), ("drop_path", 0, 1), ("reprob", 0, 1), ("layer_decay", 0, 1)):
            v = getattr(self, name)
            require(lo <= v <= hi and not (name == "layer_decay" and v == 0), f"{name}={v}: must be in [{lo}, {hi}]")


def _registered_depth(name: str):
    """Depth of a registered encoder (`vit_base_patch16`: 12), from the one table of sizes."""
    return ENCODERS.get(name, {}).get("depth")


def build_model(cfg: ClassifyConfig) -> nn.Module:
    model = models.create_encoder(cfg.model, img_size=cfg.img_size, num_classes=cfg.num_classes,
                                  global_pool=cfg.global_pool, checkpoint=cfg.finetune,
                                  drop_path_rate=cfg.drop_path if cfg.mode == "finetune" else 0.0, **cfg.model_kwargs)
    if cfg.finetune:
        trunc_normal_(model.head.weight, std=cfg.head_init_std)  # the fresh head, as the official code
    if cfg.mode == "linprobe":
        # BatchNorm without affine before the linear head: normalises features of any scale
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
        for p in model.parameters():
            p.requires_grad = False
        for p in model.head.parameters():
            p.requires_grad = True
    elif cfg.finetune_last_k is not None:
        k, depth = cfg.finetune_last_k, len(model.blocks)
        if k > depth:
            raise ConfigError(f"finetune_last_k={k}: the model has {depth} blocks")
        for name, p in model.named_parameters():
            block = int(name.split(".")[1]) if name.startswith("blocks.") else None
            p.requires_grad = name.startswith(("head", "fc_norm", "norm")) or (block is not None and block >= depth - k)
    return model


def build_transforms(cfg: ClassifyConfig):
    """(train, eval) transforms. Training draws its crop box and flip as the reference does (torchvision's for
    linear probing, timm's for fine-tuning), so pipeline=fast and pipeline=torchvision see the same crops."""
    eval_tf = transforms.Compose([  # resize to 1/0.875 then center crop, bicubic (official eval)
        transforms.Resize(int(cfg.img_size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(cfg.img_size), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    fast = cfg.pipeline == "fast"
    if cfg.mode == "linprobe":  # crop + flip only (uint8 from pipeline=fast, normalised on the device)
        train_tf = FastCropFlip(cfg.img_size, CROP_SCALE) if fast else transforms.Compose([
            transforms.RandomResizedCrop(cfg.img_size, CROP_SCALE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return train_tf, eval_tf
    patch_timm_posterize()
    crop_flip, *rest = create_transform(cfg.img_size, is_training=True, color_jitter=None, auto_augment=cfg.aa,
                                        interpolation="bicubic", re_prob=cfg.reprob, re_mode="pixel", re_count=1,
                                        mean=IMAGENET_MEAN, std=IMAGENET_STD, separate=True)
    if fast:  # timm's crop box and flip, decoded fast; then timm's own RandAugment, ToTensor, Normalize, erasing
        return FastThen(FastCropFlip(cfg.img_size, CROP_SCALE, draws=TimmCropFlip), transforms.Compose(rest)), eval_tf
    return transforms.Compose([crop_flip, *rest]), eval_tf


def build_optimizer(cfg: ClassifyConfig, model: nn.Module, lr: float, device=torch.device("cpu")):
    if cfg.mode == "linprobe":
        # LARS (trust ratio) on the weight; the bias gets plain momentum SGD, as the official LARS
        head = model.head[1]
        return Lars([{"params": [head.weight], "always_adapt": True}, {"params": [head.bias]}],
                    lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    # AdamW with layer-wise lr decay (timm's param groups: decay ** (num_layers + 1 - layer_id))
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
                               filter_bias_and_bn=True, **common.fused_adamw(device))


@torch.no_grad()
def evaluate(model: nn.Module, loader, info: DistInfo, autocast) -> dict:
    model.eval()
    crit = nn.CrossEntropyLoss()
    tot = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0, "n": 0}
    skipped = 0
    for (batch, bad) in loader:
        skipped += bad
        if batch is None:
            continue
        imgs, target = batch[0].to(info.device), batch[1].to(info.device)
        with autocast():
            out = model(imgs)
        if int(target.min()) < 0 or int(target.max()) >= out.shape[1]:  # shards' labels are known as they are read
            raise DataError(f"validation label {int(target.max())} is outside the head (num_classes={out.shape[1]})")
        k = min(5, out.shape[1])
        acc1, acc5 = accuracy(out.float(), target, topk=(1, k))
        n = imgs.shape[0]
        tot["loss"] += crit(out.float(), target).item() * n
        tot["acc1"] += acc1.item() * n
        tot["acc5"] += acc5.item() * n
        tot["n"] += n
    t = torch.tensor([tot["loss"], tot["acc1"], tot["acc5"], tot["n"], skipped], dtype=torch.float64,
                     device=info.device)
    if info.distributed:
        torch.distributed.all_reduce(t)
    if t[4].item() and not t[3].item():
        raise DataError(f"none of the {int(t[4].item())} validation samples could be read (unreadable images, or "
                        "shards without labels)")
    if t[4].item():
        _logger.warning("%d validation samples were unreadable or unlabelled and are not counted", int(t[4].item()))
    n = max(1.0, t[3].item())
    return {"loss": t[0].item() / n, "acc1": t[1].item() / n, "acc5": t[2].item() / n, "n": int(t[3].item())}


def _check_labels(dataset, num_classes: int) -> bool:
    """Every label fits the head: checked once on the labels a dataset lists (ImageFolder samples or
    `targets`), instead of a GPU sync on every micro-batch. False where the labels are only known as they are
    read (shards): the loss then checks each batch's."""
    src = getattr(dataset, "source", dataset)
    if isinstance(src, Shards):
        if src.classes and len(src.classes) > num_classes:
            raise DataError(f"{len(src.classes)} classes in {src.spec} but the head has num_classes={num_classes}")
        return False
    labels = [s[1] for s in getattr(src, "samples", [])] or list(getattr(src, "targets", []))
    if labels and max(int(v) for v in labels) >= num_classes:
        raise DataError(f"label {max(int(v) for v in labels)} is outside the head (num_classes={num_classes})")
    return True


def _datasets(cfg: ClassifyConfig, train_tf, eval_tf):
    if not cfg.data_path:
        raise DataError("data_path is required: <data_path>/train/<class>/*.jpg and <data_path>/val/<class>/*.jpg")
    train_src = labelled_source(Path(cfg.data_path) / "train", window=cfg.shuffle_window, timeout=cfg.data_timeout)
    val_src = labelled_source(Path(cfg.data_path) / "val", classes=train_src.classes, train=False,
                              timeout=cfg.data_timeout)
    if train_src.classes and len(train_src.classes) > cfg.num_classes:
        raise DataError(f"{len(train_src.classes)} classes in {cfg.data_path}/train but the head has "
                        f"num_classes={cfg.num_classes}")
    return SeededSamples(train_src, train_tf, cfg.seed), SeededSamples(val_src, eval_tf, cfg.seed, replace_bad=False)


def train(cfg: ClassifyConfig, info: Optional[DistInfo] = None, datasets=None) -> dict:
    """Fine-tune / probe; returns the last evaluation. `datasets` (train, val) replaces the
    ImageFolder reading (e.g. Fashion-MNIST arrays in bench/; the val set with replace_bad=False)."""
    info, out = common.start_run(cfg, info)
    train_tf, eval_tf = build_transforms(cfg)
    train_set, val_set = datasets or _datasets(cfg, train_tf, eval_tf)
    checked = _check_labels(train_set, cfg.num_classes)
    _check_labels(val_set, cfg.num_classes)
    with seeded(cfg.seed):  # the fresh head (and a random init) follow from the seed; global generators untouched
        model = build_model(cfg).to(info.device)
    val_loader = common.make_loader(val_set, cfg.batch_size, info, cfg.seed, cfg.num_workers, shuffle=False,
                                    drop_last=False)
    if cfg.eval_only:
        model.load_state_dict(checkpoints.read_state_dict(cfg.eval_only), strict=True)
        amp = common.resolve_amp(cfg.amp, info.device)
        stats = evaluate(model, val_loader, info, lambda: common.autocast(amp, info.device))
        _logger.info("top-1 %.2f  top-5 %.2f  loss %.4f  (%d images)", stats["acc1"], stats["acc5"], stats["loss"],
                     stats["n"])
        return stats

    mixup = None
    if cfg.mode == "finetune" and (cfg.mixup > 0 or cfg.cutmix > 0):
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                      num_classes=cfg.num_classes)
    if mixup:
        criterion = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0 and cfg.mode == "finetune":
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    def loss_fn(batch):
        imgs, target = batch  # labels were checked against the head once, before training (_check_labels) ...
        if not checked and int(target.max()) >= cfg.num_classes:  # ... or, read from shards, here (one sync)
            raise DataError(f"label {int(target.max())} is outside the head (num_classes={cfg.num_classes})")
        imgs = normalize_on_device(imgs)  # uint8 from pipeline=fast's linear probing; floats pass through
        if mixup is not None:
            imgs, target = mixup(imgs, target)
        return criterion(trainer.net(imgs), target)

    def train_mode():
        trainer.net.train()
        if cfg.mode == "linprobe":
            model.eval()
            model.head.train()  # frozen trunk in eval mode; the head's BatchNorm learns statistics

    trainer = Trainer(cfg=cfg, info=info, out=out, model=model, dataset=train_set, loss_fn=loss_fn,
                      optimizer=lambda model, lr: build_optimizer(cfg, model, lr, info.device), train_mode=train_mode)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _logger.info("%s %s | %d train / %d val | %.2fM trained params | %s", cfg.mode, cfg.model, len(train_set),
                 len(val_set), n_train / 1e6, trainer.describe())
    log_lr_table(_logger, trainer.optimizer.param_groups, model, trainer.lr)
    stats = {}

    def after_epoch(epoch):
        if (epoch + 1) % cfg.eval_freq and epoch + 1 != cfg.epochs:
            return {}
        stats.update(evaluate(model, val_loader, info, trainer.strategy.autocast))
        return {"test_loss": stats["loss"], "test_acc1": stats["acc1"], "test_acc5": stats["acc5"]}

    trainer.fit(after_epoch)
    cleanup(info)
    return stats
