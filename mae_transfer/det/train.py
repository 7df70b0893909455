"""Train / evaluate ViTDet Mask R-CNN with an MAE backbone, through detectron2's own trainer,
hooks, checkpointer, evaluator and launcher (the structure of its tools/lazyconfig_train_net.py)."""
import ast
import contextlib
import inspect
import logging
from pathlib import Path

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_setup, default_writers, hooks
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from hydra.utils import get_method

from .. import checkpoints, outputs, results
from ..checkpoints import load_file, unwrap
from ..data import DataError
from ..engine.config import ConfigError, check_key_path, check_seed, check_value_type, split_override
from ..engine.logger import log_lr_table
from ..env import log_patch
from .checkpoint import SafeCheckpointer, has_mask_head, load_backbone
from .data import boxes_only, check_coco_json, has_mask, json_safe, register_coco_from_paths

_logger = logging.getLogger("mae_transfer")


def _target_accepts(cfg, key: str) -> bool:
    """Whether `key` names an argument of a LazyCall target that the config leaves at its default
    (`model.backbone.net.use_act_checkpoint`): such a key is valid too."""
    parent_key, _, leaf = key.rpartition(".")
    try:
        node = check_key_path(cfg, parent_key, "detectron2 config") if parent_key else cfg
        target = node.get("_target_")
    except (ConfigError, AttributeError):
        return False
    if isinstance(target, str):
        target = get_method(target)
    try:
        return target is not None and leaf in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def apply_overrides(cfg, opts):
    """detectron2's LazyConfig overrides, strictly: every key must exist in the config (LazyConfig would add
    a misspelt one and train without it) or be an argument of a LazyCall's target, and a value keeps the
    kind of value it replaces."""
    for item in opts:
        key, raw = split_override(item)
        try:
            old = check_key_path(cfg, key, "detectron2 config")
        except ConfigError:
            if _target_accepts(cfg, key):
                continue
            raise
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
        check_value_type(key, old, value)
    return LazyConfig.apply_overrides(cfg, list(opts))


def data_facts(args, cfg) -> dict:
    """The data checked once, in the launcher (before any process starts), and what the processes need to know
    of it: for the sets given by path, whether each has masks and the number of classes; the config's own
    registered sets (COCO 2017 under $DETECTRON2_DATASETS) registered, their json and images there."""
    facts, cats = {}, {}
    for split in ("train", "val"):
        if getattr(args, f"{split}_json"):
            js = check_coco_json(getattr(args, f"{split}_json"), getattr(args, f"{split}_images"))
            facts[split] = {"masks": has_mask(js, getattr(args, f"{split}_json")), "classes": len(js["categories"])}
            cats[split] = sorted((c.get("id"), c.get("name")) for c in js["categories"])
    if len(cats) == 2 and cats["train"] != cats["val"]:
        diff = sorted(set(cats["train"]) ^ set(cats["val"]))
        raise DataError(f"{args.train_json} and {args.val_json} list different categories (e.g. id/name {diff[0]}): "
                        f"the model's classes would not mean the same in training and evaluation")
    # the config's own sets where none is given by path (after the user's own files: theirs is the likelier mistake)
    used = ([] if args.val_json else [cfg.dataloader.test.dataset.names]) + \
        ([] if args.eval_only or args.train_json else [cfg.dataloader.train.dataset.names])
    for names in used:
        _check_registered(names)
    return facts


def setup(args):
    """Config file + overrides + dataset paths + device -> a ready LazyConfig."""
    cfg = apply_overrides(LazyConfig.load(args.config), args.opts)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    # default_setup seeds every generator with seed + rank; one rule for every host: [0, 2**32), default 0
    # (detectron2's -1, "draw one at random", would leave the run's seed unknown)
    cfg.train.seed = check_seed(cfg.train.get("seed") if getattr(args, "seed", None) is None else args.seed,
                                "train.seed")
    facts = getattr(args, "facts", None) or data_facts(args, cfg)  # a process detectron2's launch started: given
    if args.train_json:
        register_coco_from_paths("mae_det_train", args.train_json, args.train_images)
        cfg.dataloader.train.dataset.names = "mae_det_train"
        if not facts["train"]["masks"]:
            boxes_only(cfg)
            _logger.warning("%s has boxes but no masks: training ViTDet Faster R-CNN (no mask head); "
                            "box AP only", args.train_json)
    mask_head = args.eval_only and (facts["mask_head"] if "mask_head" in facts else has_mask_head(args.eval_only))
    if args.eval_only and not args.train_json and not mask_head:
        boxes_only(cfg)  # decided by the checkpoint, as the predictor does: no random mask head is scored
    if args.val_json:
        register_coco_from_paths("mae_det_val", args.val_json, args.val_images)
        cfg.dataloader.test.dataset.names = "mae_det_val"
        cfg.model.roi_heads.num_classes = facts["val"]["classes"]
        if not facts["val"]["masks"] or cfg.model.roi_heads.get("mask_head") is None:
            cfg.dataloader.evaluator.tasks = ("bbox",)  # nothing to score masks against / no mask head
        else:
            # named, not guessed from the predictions: a model that predicts nothing scores 0 mask AP
            # (COCOEvaluator would otherwise drop the segm task and report box AP alone)
            cfg.dataloader.evaluator.tasks = ("bbox", "segm")
    cfg.dataloader.evaluator.dataset_name = cfg.dataloader.test.dataset.names
    cfg.dataloader.evaluator.output_dir = str(Path(cfg.train.output_dir) / "inference")
    if not torch.cuda.is_available():
        if cfg.train.device != "cpu" or cfg.train.amp.enabled:
            _logger.warning("no GPU: training on the CPU without AMP")
        cfg.train.device, cfg.train.amp.enabled, cfg.train.ddp.fp16_compression = "cpu", False, False
    return cfg


def _check_registered(names):
    for name in [names] if isinstance(names, str) else names:
        if name not in DatasetCatalog.list():
            raise DataError(f"dataset {name!r} is not registered; pass --train-json/--train-images "
                            f"(and --val-json/--val-images) for a COCO-format set")
        meta = MetadataCatalog.get(name)
        if hasattr(meta, "json_file"):  # COCO's own sets: files there?
            check_coco_json(meta.json_file, meta.image_root)


def do_test(cfg, model):
    """COCO evaluation; writes eval_results.json and returns detectron2's results."""
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
        out = Path(cfg.train.output_dir) / "eval_results.json"
        outputs.write_json(out, json_safe(results), indent=2)
        _logger.info("evaluation written to %s", out)
    return results


def flat_metrics(res: dict) -> dict:
    """detectron2's {'bbox': {'AP': ..}, 'segm': {..}} -> {'box AP': .., 'mask AP50': ..} (per-class APs
    stay in eval_results.json), with eval_results.json's meaning of NaN."""
    names = {"bbox": "box", "segm": "mask"}
    return {f"{names.get(task, task)} {k}": v for task, ms in json_safe(res).items() for k, v in ms.items()
            if "-" not in k}


def do_train(args, cfg) -> dict:
    """Train (or resume) and return the final evaluation."""
    model = instantiate(cfg.model).to(cfg.train.device)
    resuming = args.resume and SafeCheckpointer(model, cfg.train.output_dir).has_checkpoint()
    backbone = args.backbone or cfg.train.get("init_checkpoint") or ""
    if not resuming:
        if not backbone:
            _logger.warning("no --backbone: the ViT starts from random weights")
        else:
            load_backbone(model, backbone)  # --backbone, or the config's train.init_checkpoint
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    log_lr_table(_logger, optim.param_groups, model, cfg.optimizer.lr)
    train_loader = instantiate(cfg.dataloader.train)
    ddp_kw = dict(cfg.train.ddp)
    if cfg.train.device == "cpu":
        ddp_kw["device_ids"] = None  # DDP on CPU (gloo) takes no device ids
    model = create_ddp_model(model, **ddp_kw)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = SafeCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    final = {}

    def evaluate():
        final.clear()
        final.update(do_test(cfg, model))
        return final

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    start_iter = 0
    if resuming:
        checkpointer.resume_or_load("", resume=True)
        start_iter = trainer.iter + 1
        _logger.info("resuming at iteration %d", start_iter)
    trainer.train(start_iter, cfg.train.max_iter)
    return final


@contextlib.contextmanager
def rank_seeds_in_range():
    """detectron2's default_setup seeds process `rank` with seed + rank, which numpy refuses past 2**32 - 1: with
    --num-gpus N, the N - 1 largest seeds the grammar accepts crashed every process but rank 0. Inside this block
    that sum wraps modulo 2**32 (detectron2's own seeds everywhere else). Written for detectron2 0.6 (a59f0563)."""
    real = d2_defaults.seed_all_rng
    if "seed + rank" not in inspect.getsource(d2_defaults.default_setup):  # another detectron2: left as it is
        yield
        return
    d2_defaults.seed_all_rng = lambda seed=None: real(None if seed is None else seed % 2**32)
    log_patch("detectron2 default_setup: the seed of process `rank` is (seed + rank) mod 2**32 (numpy's range)")
    try:
        yield
    finally:
        d2_defaults.seed_all_rng = real


def main(args) -> dict:
    """One process of a detection run (launched by detectron2's `launch`); rank 0 writes result.json."""
    cfg = setup(args)
    with rank_seeds_in_range():
        default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="mae_transfer", abbrev_name="mae")
    ckpt = args.eval_only or args.backbone or cfg.train.get("init_checkpoint") or None
    with results.recorded("det", cfg.train.output_dir, args.config, cfg.train.get("seed"), ckpt) as rec:
        if args.eval_only:
            model = instantiate(cfg.model)
            # strict: a config that does not fit the weights is one error, never a model with random parts
            checkpoints.load_into(model, unwrap(load_file(args.eval_only)), f"{args.eval_only} with {args.config}")
            model.to(cfg.train.device)
            res = do_test(cfg, create_ddp_model(model))
        else:
            res = do_train(args, cfg)
        rec.metrics.update(flat_metrics(res))
    return res
