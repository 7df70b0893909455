"""`mae-transfer det`: ViTDet Mask R-CNN (detectron2) from any MAE checkpoint."""
from typing import List

from .. import outputs, results
from ..engine.config import check_seed, resolve_config
from ..identify import BACKBONES, check_backbone
from . import common

DOC = """ViTDet Mask R-CNN (detectron2) from any MAE checkpoint (configs: mask_rcnn_vitdet_{b,l}_100ep,
mask_rcnn_vitdet_h_75ep, tiny_cpu).

  mae-transfer det --backbone mae_pretrain_vit_large.pth --config vitdet_l_100ep --num-gpus 8
      # COCO 2017 under $DETECTRON2_DATASETS
  mae-transfer det --backbone X.pth --config tiny_cpu --train-json a.json --train-images imgs/ \\
      --val-json b.json --val-images imgs/ train.max_iter=100
  mae-transfer det --config tiny_cpu --eval-only output/det/model_final.pth --val-json ... --output-dir eval/

--backbone: official MAE (full or encoder-only), a pretraining checkpoint, timm-style, HF or .safetensors
(default: the config's train.init_checkpoint; none: random init). key=value: detectron2 LazyConfig
overrides (e.g. train.max_iter=1000); a key the config lacks is an error.
"""


def main(argv: List[str], prog: str = "mae-transfer det"):
    p = common.parser(prog, DOC, "det", "mask_rcnn_vitdet_b_100ep")
    p.add_argument("--backbone", default="", metavar="CKPT", help="MAE checkpoint for the ViT")
    for split in ("train", "val"):
        p.add_argument(f"--{split}-json", metavar="FILE", help=f"COCO-format {split} annotations (a set by path)")
        p.add_argument(f"--{split}-images", metavar="DIR", help=f"the {split} images")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    a = common.parse(p, argv)
    for split in ("train", "val"):
        if bool(getattr(a, f"{split}_json")) != bool(getattr(a, f"{split}_images")):
            p.error(f"--{split}-json and --{split}-images go together")
    a.config = a.config_file = str(resolve_config(a.config or "mask_rcnn_vitdet_b_100ep", "det"))  # d2: config_file
    a.opts, a.eval_only = a.overrides, a.eval_only or ""

    # detectron2: an optional host, imported when the command runs
    from detectron2.config import LazyConfig
    from detectron2.engine import launch

    from ..det.checkpoint import has_mask_head
    from ..det.train import apply_overrides, data_facts
    from ..det.train import main as det_main

    # everything a user can get wrong is checked here, once, before processes start; what the processes need to
    # know of it travels with their arguments (a.facts)
    cfg = apply_overrides(LazyConfig.load(a.config), a.opts)
    if a.backbone:
        check_backbone(a.backbone, BACKBONES[:-1], "det --backbone")
    if a.eval_only:  # a trained detector: readable and safe (its layout is detectron2's); box-only or not
        mask_head = has_mask_head(check_backbone(a.eval_only, ("detector",), "det --eval-only"))
    a.facts = {**data_facts(a, cfg), **({"mask_head": mask_head} if a.eval_only else {})}
    seed = check_seed(a.seed if a.seed is not None else cfg.train.get("seed"), "train.seed")
    run = results.settings(a.config, seed, None,
                          a.eval_only or a.backbone or cfg.train.get("init_checkpoint"),
                          [a.train_json, a.train_images, a.val_json, a.val_images], results.recipe(overrides=a.opts))
    with outputs.claim(a.output_dir or cfg.train.output_dir, a.resume, run, a.allow_changes):  # held for launch's
        launch(det_main, a.num_gpus, num_machines=a.num_machines, machine_rank=a.machine_rank, dist_url=a.dist_url,
               args=(a,))
