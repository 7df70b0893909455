"""`mae-transfer seg`: UperNet (MMSegmentation) from any MAE checkpoint."""
import argparse
import os
from typing import List

from .. import outputs
from ..engine.config import resolve_config
from ..identify import BACKBONES, check_backbone
from . import common

DOC = """UperNet (MMSegmentation) on ADE20K -- or any segmentation set by path -- from any MAE checkpoint
(configs: mae_vit_{base,large}_upernet_160k_ade20k, tiny_cpu).

  mae-transfer seg --backbone mae_pretrain_vit_base.pth --data-root data/ade/ADEChallengeData2016 --num-gpus 8
  mae-transfer seg --backbone X.pth --data-root data/VOCdevkit/VOC2012            # VOC layout, 21 classes
  mae-transfer seg --backbone X.pth --config tiny_cpu --classes classes.txt \\
      --train-images tr/images --train-masks tr/masks --val-images va/images --val-masks va/masks
  mae-transfer seg --config tiny_cpu --eval-only work/iter_160000.pth --aug-test --output-dir eval/

key=value: mmengine config overrides (its cfg-options, e.g. train_cfg.max_iters=1000 optim_wrapper.optimizer.lr=1e-4);
a key the config lacks is an error.
"""


def main(argv: List[str], prog: str = "mae-transfer seg"):
    p = common.parser(prog, DOC, "seg", "mae_vit_base_upernet_160k_ade20k")
    p.add_argument("--backbone", default="", metavar="CKPT",
                   help="MAE checkpoint (official, pretraining, timm, HF, safetensors; none: random init)")
    p.add_argument("--data-root", default="", help="ADE20K layout (images/{training,validation}, annotations/...) "
                   "or VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    for split in ("train", "val"):
        p.add_argument(f"--{split}-images", metavar="DIR", help=f"{split} images (masks: PNGs named by image stem)")
        p.add_argument(f"--{split}-masks", metavar="DIR", help=f"{split} masks: class indices (grey or palette), "
                       "255 ignored")
    p.add_argument("--classes", metavar="FILE", help="one class name per line (with --train-images ...)")
    p.add_argument("--zero-is-other", action="store_true",
                   help="label 0 is 'other' and ignored; 1..N are the classes (ADE20K's convention)")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip evaluation")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"],
                   help="mmengine's launcher (default: pytorch under torchrun, else none)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    a = common.parse(p, argv)
    a.config = str(resolve_config(a.config or "mae_vit_base_upernet_160k_ade20k", "seg"))
    a.eval_only = a.eval_only or ""
    a.launcher = a.launcher or ("pytorch" if "RANK" in os.environ else "none")

    from ..seg import train  # mmseg: an optional host, imported when the command runs

    cfg = train.build_config(a)
    if not common.launcher_checked("seg", argv):  # once, before the processes start (not again in each)
        if a.backbone:  # a clear error now rather than inside the runner
            check_backbone(a.backbone, BACKBONES[:-1], "seg --backbone")
        if a.eval_only:
            check_backbone(a.eval_only, ("segmentor",), "seg --eval-only")  # a trained UperNet, read safely
        train.preflight(cfg, a)
    with outputs.claim(cfg.work_dir, a.resume, train.settings(a, cfg), a.allow_changes):  # held for the processes
        common.relaunch_under_torchrun("seg", argv, a.num_gpus, cfg.work_dir)
        return train.main(a, cfg)

