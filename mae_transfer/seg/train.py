"""Train / evaluate UperNet with an MAE backbone through mmengine's Runner (mmseg's tools/train.py
and tools/test.py, with MAE-checkpoint handling, data checks and CPU fallbacks)."""
import logging
from pathlib import Path

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner

from .. import checkpoints, results
from ..engine.config import check_key_path, check_seed, check_value_type, split_override
from ..engine.logger import setup_logging
from .compat import cpu_distributed, mmengine_checkpoints
from .data import check_data, configure_paths, plain_bn

_logger = logging.getLogger("mae_transfer")


def cfg_options(cfg: Config, overrides) -> dict:
    """Trailing key=value pairs as mmengine cfg-options (its own value parser), strictly: every key must
    exist in the config (mmengine would add a misspelt one) and keep its kind of value."""
    options = {}
    for item in overrides:
        key, raw = split_override(item)
        old = check_key_path(cfg._cfg_dict, key, "mmengine config")
        value = DictAction._parse_iterable(raw)
        check_value_type(key, old, value)
        options[key] = value
    return options


def build_config(args) -> Config:
    cfg = Config.fromfile(args.config)
    if args.overrides:
        cfg.merge_from_dict(cfg_options(cfg, args.overrides))
    if args.backbone:
        if cfg.model.backbone.type == "MAE":  # a stock mmseg MAE config: same module, any-format loading
            cfg.model.backbone.type = "MAEViT"
        cfg.model.backbone.checkpoint = args.backbone
    configure_paths(cfg, args)
    if args.output_dir:
        cfg.work_dir = args.output_dir
    cfg.launcher = args.launcher
    seed = getattr(args, "seed", None)  # Runner.set_randomness; one rule for every host: [0, 2**32), default 0
    seed = check_seed(cfg.get("randomness", {}).get("seed") if seed is None else seed, "randomness.seed")
    cfg.randomness = dict(cfg.get("randomness") or {}, seed=seed)
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


class _KeepMetrics(Hook):
    """The metrics of the last validation or test, for result.json (read from the run, not its log)."""

    def __init__(self):
        self.metrics = {}

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})

    def after_test_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def preflight(cfg: Config, args) -> None:
    """What a run checks once, in the launcher, before any process starts (not again in every rank): every
    image and mask of the splits it uses, and the checkpoint `--resume` would load (through the safe reader,
    names and shapes only)."""
    check_data(cfg, ("val",) if args.eval_only else ("train", "val"))
    last = Path(cfg.work_dir) / "last_checkpoint"
    if args.resume and last.is_file() and Path(last.read_text().strip()).is_file():
        checkpoints.load_file(last.read_text().strip(), peek=True)


def main(args, cfg: Config) -> dict:
    """One process of a segmentation run: train (or evaluate) UperNet with `cfg` (`build_config`, its inputs
    checked by `preflight`, its folder claimed by the launcher); writes result.json (mIoU, mAcc, aAcc) there."""
    setup_logging(None, is_main=True)  # the toolkit's own lines (compat patches) on stdout, beside mmengine's
    if cfg.launcher == "pytorch" and not torch.cuda.is_available():
        cpu_distributed(cfg)
    ckpt, seed = args.eval_only or args.backbone or None, cfg.get("randomness", {}).get("seed")
    # mmengine's own saves and loads (resume, --eval-only) need its message-hub types allowed
    with results.recorded("seg", cfg.work_dir, args.config, seed, ckpt) as rec, mmengine_checkpoints():
        runner = Runner.from_cfg(cfg)
        keep = _KeepMetrics()
        runner.register_hook(keep, priority="LOWEST")
        runner.test() if args.eval_only else runner.train()
        rec.metrics.update(keep.metrics)
    return rec.metrics


def settings(args, cfg: Config) -> dict:
    """What a resumed run must share with its first start (outputs.claim)."""
    data = [args.data_root] + [getattr(args, f"{s}_{k}", None) for s in ("train", "val") for k in ("images", "masks")]
    return results.settings(args.config, cfg.get("randomness", {}).get("seed"), None,
                            args.eval_only or args.backbone or None, data + [getattr(args, "classes", None)],
                            results.recipe(overrides=args.overrides or ()))
