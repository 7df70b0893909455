"""Train / evaluate ViTDet Mask R-CNN with an MAE backbone, through detectron2's own trainer,
hooks, checkpointer, evaluator and launcher (the structure of its tools/lazyconfig_train_net.py)."""
import json
import logging
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..engine.logger import log_lr_table
from .checkpoint import load_backbone
from .data import boxes_only, check_coco_json, has_mask, json_safe, register_coco_from_paths

_logger = logging.getLogger("mae_transfer")


def setup(args):
    """Config file + overrides + dataset paths + device -> a ready LazyConfig."""
    cfg = LazyConfig.load(args.config)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    if getattr(args, "seed", None) is not None:
        cfg.train.seed = args.seed  # default_setup seeds every generator with seed + rank
    if args.train_json:
        js = register_coco_from_paths("mae_det_train", args.train_json, args.train_images)
        cfg.dataloader.train.dataset.names = "mae_det_train"
        if not has_mask(js, args.train_json):
            boxes_only(cfg)
            _logger.warning("%s has boxes but no masks: training ViTDet Faster R-CNN (no mask head); "
                            "box AP only", args.train_json)
    if args.val_json:
        js = register_coco_from_paths("mae_det_val", args.val_json, args.val_images)
        cfg.dataloader.test.dataset.names = "mae_det_val"
        cfg.model.roi_heads.num_classes = len(js["categories"])
        if not has_mask(js, args.val_json):  # nothing to score masks against: box AP only
            if args.eval_only and not args.train_json:
                boxes_only(cfg)
            cfg.dataloader.evaluator.tasks = ("bbox",)
        elif cfg.model.roi_heads.get("mask_head") is not None:
            # named, not guessed from the predictions: a model that predicts nothing scores 0 mask AP
            # (COCOEvaluator would otherwise drop the segm task and report box AP alone)
            cfg.dataloader.evaluator.tasks = ("bbox", "segm")
    cfg.dataloader.evaluator.dataset_name = cfg.dataloader.test.dataset.names
    cfg.dataloader.evaluator.output_dir = str(Path(cfg.train.output_dir) / "inference")
    used = [cfg.dataloader.test.dataset.names] + ([] if args.eval_only else [cfg.dataloader.train.dataset.names])
    for names in used:
        _check_registered(names)
    if not torch.cuda.is_available():
        if cfg.train.device != "cpu" or cfg.train.amp.enabled:
            _logger.warning("no GPU: training on the CPU without AMP")
        cfg.train.device, cfg.train.amp.enabled, cfg.train.ddp.fp16_compression = "cpu", False, False
    return cfg


def _check_registered(names):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data import DataError

    for name in [names] if isinstance(names, str) else names:
        if name not in DatasetCatalog.list():
            raise DataError(f"dataset {name!r} is not registered; pass --train-json/--train-images "
                            f"(and --val-json/--val-images) for a COCO-format set")
        meta = MetadataCatalog.get(name)
        if hasattr(meta, "json_file"):  # COCO's own sets: are the files there?
            check_coco_json(meta.json_file, meta.image_root)


def do_test(cfg, model):
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
        out = Path(cfg.train.output_dir) / "eval_results.json"
        out.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False))
        _logger.info("evaluation written to %s", out)
    return results


def do_train(args, cfg):
    model = instantiate(cfg.model).to(cfg.train.device)
    checkpointer_probe = DetectionCheckpointer(model, cfg.train.output_dir)
    resuming = args.resume and checkpointer_probe.has_checkpoint()
    if not resuming:
        if not args.backbone:
            _logger.warning("no --backbone: the ViT starts from random weights")
        else:
            load_backbone(model, args.backbone)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    log_lr_table(_logger, optim.param_groups, model, cfg.optimizer.lr)
    train_loader = instantiate(cfg.dataloader.train)
    ddp_kw = dict(cfg.train.ddp)
    if cfg.train.device == "cpu":
        ddp_kw["device_ids"] = None  # DDP on CPU (gloo) takes no device ids
    model = create_ddp_model(model, **ddp_kw)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    start_iter = 0
    if resuming:
        checkpointer.resume_or_load("", resume=True)
        start_iter = trainer.iter + 1
        _logger.info("resuming at iteration %d", start_iter)
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = setup(args)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="mae_transfer", abbrev_name="mae")
    if args.eval_only:
        model = instantiate(cfg.model).to(cfg.train.device)
        DetectionCheckpointer(model).load(args.eval_only)
        return do_test(cfg, create_ddp_model(model))
    do_train(args, cfg)
