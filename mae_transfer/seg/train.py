"""Train / evaluate UperNet with an MAE backbone through mmengine's Runner (mmseg's tools/train.py
and tools/test.py, with MAE-checkpoint handling, data checks and CPU fallbacks)."""
import logging
from pathlib import Path

import torch
from mmengine.config import Config

from .data import check_data, configure_paths, plain_bn

_logger = logging.getLogger("mae_transfer")


def build_config(args) -> Config:
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.backbone:
        if cfg.model.backbone.type == "MAE":  # a stock mmseg MAE config: same module, any-format loading
            cfg.model.backbone.type = "MAEViT"
        cfg.model.backbone.checkpoint = args.backbone
    configure_paths(cfg, args)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    cfg.launcher = args.launcher
    if getattr(args, "seed", None) is not None:
        cfg.randomness = dict(cfg.get("randomness") or {}, seed=args.seed)  # Runner.set_randomness
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
        plain_bn(cfg.model)
        if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
            cfg.optim_wrapper.type = "OptimWrapper"
            cfg.optim_wrapper.pop("dtype", None)
        cfg.env_cfg.dist_cfg = dict(backend="gloo")
    return cfg


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
