#!/usr/bin/env python
"""UperNet (MMSegmentation) on ADE20K -- or any segmentation set by path -- from any MAE checkpoint.

  python tools/train_seg.py --backbone mae_pretrain_vit_base.pth --data-root data/ade/ADEChallengeData2016
  python tools/train_seg.py --backbone X.pth --data-root data/VOCdevkit/VOC2012      # VOC layout, 21 classes
  python tools/train_seg.py --backbone X.pth --config configs/seg/tiny_cpu.py --classes classes.txt \
      --train-images tr/images --train-masks tr/masks --val-images va/images --val-masks va/masks
  torchrun --nproc_per_node 8 tools/train_seg.py --launcher pytorch --backbone X.pth \\
      --config configs/seg/mae_vit_large_upernet_160k_ade20k.py
  python tools/train_seg.py --eval-only work_dir/iter_160000.pth [--aug-test]
"""
import argparse

import _cli  # noqa: F401


def main():
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="", help="MAE checkpoint (official, tools/pretrain.py, timm, HF, safetensors)")
    p.add_argument("--config", default=str(_cli.ROOT / "configs/seg/mae_vit_base_upernet_160k_ade20k.py"))
    p.add_argument("--data-root", default="", help="ADE20K layout (images/{training,validation}, annotations/...) "
                   "or VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)")
    for split in ("train", "val"):
        p.add_argument(f"--{split}-images", help=f"{split} images (any set by path; masks: PNGs named by image stem)")
        p.add_argument(f"--{split}-masks", help=f"{split} masks: class indices (grey or palette PNG), 255 ignored")
    p.add_argument("--classes", help="file with one class name per line (with --train-images ...)")
    p.add_argument("--zero-is-other", action="store_true",
                   help="label 0 is 'other' and ignored; 1..N are the classes (ADE20K's convention)")
    p.add_argument("--work-dir", default="")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in work_dir")
    p.add_argument("--eval-only", default="", metavar="CKPT", help="evaluate a trained checkpoint and exit")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip evaluation")
    p.add_argument("--seed", type=int, help="seeds model init, sampling and augmentation (mmengine randomness.seed)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0)
    a = p.parse_args()
    if a.backbone:
        from mae_transfer.checkpoints import read_state_dict
        read_state_dict(a.backbone)  # a clear error now rather than inside the runner

    from mae_transfer.seg.train import main as seg_main
    seg_main(a)


if __name__ == "__main__":
    _cli.run_cli(main)
