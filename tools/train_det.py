#!/usr/bin/env python
"""ViTDet Mask R-CNN (detectron2) from any MAE checkpoint.

  python tools/train_det.py --backbone mae_pretrain_vit_large.pth --config configs/det/mask_rcnn_vitdet_l_100ep.py \\
      --num-gpus 8                                   # COCO 2017 under $DETECTRON2_DATASETS
  python tools/train_det.py --backbone X.pth --config configs/det/tiny_cpu.py \\
      --train-json a.json --train-images imgs/ --val-json b.json --val-images imgs/ train.max_iter=100
  python tools/train_det.py --config ... --eval-only output/det/model_final.pth --val-json ...

--backbone: official MAE (full or encoder-only), tools/pretrain.py, timm-style, HF or .safetensors.
Trailing key=value pairs override the LazyConfig (detectron2 syntax, e.g. train.max_iter=1000).
"""
import argparse

import _cli  # noqa: F401


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="", help="MAE checkpoint for the ViT")
    p.add_argument("--config", dest="config", default=str(_cli.ROOT / "configs/det/mask_rcnn_vitdet_b_100ep.py"))
    p.add_argument("--output-dir", default="")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--eval-only", default="", metavar="CKPT", help="evaluate a trained model and exit")
    p.add_argument("--train-json"), p.add_argument("--train-images")
    p.add_argument("--val-json"), p.add_argument("--val-images")
    p.add_argument("--seed", type=int, help="seeds model init, sampling and augmentation (train.seed; -1: random)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs, or CPU processes)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    p.add_argument("opts", nargs="*", help="LazyConfig overrides, key=value")
    a = p.parse_intermixed_args()
    for flag in ("train", "val"):
        if bool(getattr(a, f"{flag}_json")) != bool(getattr(a, f"{flag}_images")):
            p.error(f"--{flag}-json and --{flag}-images go together")
    a.config_file = a.config  # detectron2's default_setup reads this name

    from detectron2.engine import launch

    from mae_transfer.det.data import check_coco_json
    from mae_transfer.det.train import main as det_main

    for flag in ("train", "val"):  # fail before spawning processes
        if getattr(a, f"{flag}_json"):
            check_coco_json(getattr(a, f"{flag}_json"), getattr(a, f"{flag}_images"))
    if a.backbone:
        from mae_transfer.checkpoints import read_state_dict
        read_state_dict(a.backbone)  # readable? (clear error now rather than inside a worker)
    launch(det_main, a.num_gpus, num_machines=a.num_machines, machine_rank=a.machine_rank, dist_url=a.dist_url,
           args=(a,))


if __name__ == "__main__":
    _cli.run_cli(main)
