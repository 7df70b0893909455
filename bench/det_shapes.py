#!/usr/bin/env python
"""Does the MAE backbone help detection? ViTDet Mask R-CNN (configs/det/tiny_cpu.py) on the generated
COCO-format shapes set, same iterations, three backbones: the demo's MAE (64-px crops of 14 photos),
an MAE pretrained in-domain on the training images without their labels, and random init.
~20 min on 2 cores.

  .venv/bin/python bench/det_shapes.py [--backbone output/demo/pretrain/checkpoint-last.pth] [--iters 300]

Without the demo checkpoint it first runs the demo pretraining (tools/pretrain.py, ~4 min).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="output/demo/pretrain/checkpoint-last.pth")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--output-dir", default="output/bench/det_shapes")
    a = p.parse_args()
    out = Path(a.output_dir)
    if not Path(a.backbone).is_file():
        subprocess.run([PY, str(ROOT / "tools/pretrain.py"), f"output_dir={Path(a.backbone).parent}"], check=True)
    data = out / "coco_shapes"
    if not (data / "annotations/val.json").is_file():
        subprocess.run([PY, "-m", "mae_transfer.data.synthetic", "coco", str(data), "300", "50"], check=True,
                       stdout=subprocess.DEVNULL)
    in_domain = out / "pretrain_in_domain"
    if not (in_domain / "checkpoint-last.pth").is_file():  # same model and recipe as the demo, other images
        subprocess.run([PY, str(ROOT / "tools/pretrain.py"), "--config", str(ROOT / "configs/pretrain/demo_tiny.py"),
                        "--data-path", str(data / "train"),
                        "--output-dir", str(in_domain), "epochs=100", "warmup_epochs=5", "save_freq=100",
                        "vis_freq=100"], check=True, stdout=subprocess.DEVNULL)
    results = {}
    for tag, backbone in (("MAE, demo photos", a.backbone), ("MAE, in-domain (train images, no labels)",
                                                             str(in_domain / "checkpoint-last.pth")),
                          ("random init", "")):
        run = out / tag.replace(" ", "_")
        t = time.time()
        subprocess.run([PY, str(ROOT / "tools/train_det.py"), "--config", str(ROOT / "configs/det/tiny_cpu.py"),
                        "--backbone", backbone, "--output-dir", str(run),
                        "--train-json", str(data / "annotations/train.json"), "--train-images", str(data / "train"),
                        "--val-json", str(data / "annotations/val.json"), "--val-images", str(data / "val"),
                        f"train.max_iter={a.iters}"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = json.loads((run / "eval_results.json").read_text())
        results[tag] = (res["bbox"]["AP"], res["bbox"]["AP50"], res["segm"]["AP"], time.time() - t)
    print(f"\nViTDet Mask R-CNN, ViT-Ti/8, {a.iters} iterations x 8 images, generated shapes (50 val images)")
    print("| backbone | box AP | box AP50 | mask AP | minutes |")
    print("|---|---|---|---|---|")
    for tag, (ap, ap50, map_, sec) in results.items():
        print(f"| {tag} | {ap:.1f} | {ap50:.1f} | {map_:.1f} | {sec / 60:.1f} |")


if __name__ == "__main__":
    main()
