"""Train / evaluate UperNet with an MAE backbone through mmengine's Runner (mmseg's tools/train.py
and tools/test.py, with MAE-checkpoint handling, data checks and CPU fallbacks)."""
import logging
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from ..data import DataError

_logger = logging.getLogger("mae_transfer")


def _walk(node, fn):
    """Apply fn to every dict in a nested config."""
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            _walk(v, fn)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _walk(v, fn)


def build_config(args) -> Config:
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.backbone:
        if cfg.model.backbone.type == "MAE":  # a stock mmseg MAE config: same module, any-format loading
            cfg.model.backbone.type = "MAEViT"
        cfg.model.backbone.checkpoint = args.backbone
    if args.data_root:
        for dl in ("train_dataloader", "val_dataloader", "test_dataloader"):
            cfg[dl].dataset.data_root = args.data_root
    if args.work_dir:
        cfg.work_dir = args.work_dir
    cfg.launcher = args.launcher
    cfg.resume = bool(args.resume)
    if args.eval_only:
        cfg.load_from = args.eval_only
    for ev in ("val_evaluator", "test_evaluator"):
        if cfg[ev].get("type") == "PerClassIoUMetric":
            cfg[ev].json_file = str(Path(cfg.work_dir) / "eval_results.json")
    if args.aug_test:  # multi-scale + flip
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if not torch.cuda.is_available():  # CPU: plain BN (SyncBN is CUDA-only), fp32, gloo
        _walk(cfg.model, lambda d: d.update(type="BN") if d.get("type") == "SyncBN" else None)
        if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
            cfg.optim_wrapper.type = "OptimWrapper"
            cfg.optim_wrapper.pop("dtype", None)
        cfg.env_cfg.dist_cfg = dict(backend="gloo")
    return cfg


def check_data(cfg: Config, splits=("train", "val")) -> None:
    """Every image has its annotation and every label is a class, 255 (ignore) or, under
    reduce_zero_label, 0 -- checked before training rather than discovered at iteration N."""
    from PIL import Image

    for split in splits:
        ds = cfg[f"{split}_dataloader"].dataset
        root = Path(ds.data_root)
        img_dir, ann_dir = root / ds.data_prefix.img_path, root / ds.data_prefix.seg_map_path
        if not img_dir.is_dir():
            raise DataError(f"{split} images not found: {img_dir} "
                            "(expected the ADE20K layout images/{training,validation})")
        imgs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not imgs:
            raise DataError(f"no {split} images in {img_dir}")
        n_cls = len(ds.get("metainfo", {}).get("classes", ())) or cfg.model.decode_head.num_classes
        reduce = ds.get("reduce_zero_label", True)
        top = n_cls if reduce else n_cls - 1  # largest valid raw label
        for p in imgs:
            ann = ann_dir / (p.stem + ".png")
            if not ann.is_file():
                raise DataError(f"annotation missing for {p.name}: expected {ann}")
            labels = np.unique(np.asarray(Image.open(ann)))
            bad = labels[(labels > top) & (labels != 255)]
            if bad.size:
                raise DataError(f"{ann}: label {int(bad[0])} is outside the {n_cls} classes "
                                f"(valid: {'1' if reduce else '0'}..{top}, 255 = ignore)")


def main(args):
    from mmengine.runner import Runner

    import mae_transfer.seg  # noqa: F401  (compat + registry entries)

    from ..engine.logger import setup_logging
    from .compat import allow_mmengine_checkpoints

    setup_logging(None, is_main=True)  # the toolkit's own lines (compat patches) on stdout, beside mmengine's
    allow_mmengine_checkpoints()  # before the runner saves (and on resume, loads) a checkpoint
    cfg = build_config(args)
    check_data(cfg, ("val",) if args.eval_only else ("train", "val"))
    if cfg.launcher == "pytorch" and not torch.cuda.is_available():
        from .compat import cpu_distributed
        cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    if args.eval_only:
        return runner.test()
    runner.train()
