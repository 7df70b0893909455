#!/usr/bin/env python
"""Run a trained detector or segmenter on images and draw the result.

  python tools/predict.py det --config configs/det/tiny_cpu.py --weights output/demo/det/model_final.pth \\
      --classes-json val.json photos/ more/*.jpg --out output/predict/det
  python tools/predict.py seg --config configs/seg/tiny_cpu.py --weights output/demo/seg/iter_150.pth \\
      photos/ --out output/predict/seg

Inputs: image files, folders or globs. Writes one overlay PNG per image (detectron2's Visualizer /
mmseg's SegLocalVisualizer) and machine-readable results: det -> coco_results.json (COCO results
format) + images.json (id -> file); seg -> <stem>_classes.png (class index per pixel) + classes.json.
"""
import argparse
import glob
import json
from pathlib import Path

import _cli  # noqa: F401


def expand(inputs):
    from mae_transfer.data import DataError
    from mae_transfer.data.images import IMG_EXTENSIONS

    files = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            files += [Path(f) for f in sorted(glob.glob(x)) if Path(f).suffix.lower() in IMG_EXTENSIONS]
    if not files:
        raise DataError(f"no images found in {' '.join(inputs)}")
    return files


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["det", "seg"])
    p.add_argument("inputs", nargs="+", help="images, folders or globs")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True, help="a trained model (detectron2 model_final.pth / mmseg iter_N.pth)")
    p.add_argument("--out", default="output/predict")
    p.add_argument("--device", default="auto", help="auto (cuda where available) | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--score-thresh", type=float, default=0.5, help="det: keep detections above this score")
    p.add_argument("--classes-json", help="det: a COCO json whose categories name (and number) the classes")
    a = p.parse_args()
    files, out = expand(a.inputs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [files[i:i + a.batch_size] for i in range(0, len(files), a.batch_size)]
    if a.task == "det":
        from mae_transfer.det.predict import DetPredictor

        cats = json.loads(Path(a.classes_json).read_text())["categories"] if a.classes_json else None
        pred = DetPredictor(a.config, a.weights, a.device, a.score_thresh, [c["name"] for c in cats] if cats else None)
        results, images = [], []
        for batch in tqdm(batches, desc="predict", unit="batch"):
            arrays = [np.asarray(Image.open(f).convert("RGB")) for f in batch]
            for f, img, inst in zip(batch, arrays, pred(arrays)):
                image_id = len(images)
                images.append({"id": image_id, "file_name": str(f)})
                results += pred.to_coco(inst, image_id, [c["id"] for c in cats] if cats else None)
                Image.fromarray(pred.draw(img, inst)).save(out / f"{f.stem}_overlay.png")
        (out / "coco_results.json").write_text(json.dumps(results))
        (out / "images.json").write_text(json.dumps(images, indent=1))
        print(f"{len(results)} detections in {len(files)} images -> {out}/coco_results.json, *_overlay.png")
    else:
        from mae_transfer.seg.predict import SegPredictor

        pred = SegPredictor(a.config, a.weights, a.device)
        for batch in tqdm(batches, desc="predict", unit="batch"):
            for f, res in zip(batch, pred([str(f) for f in batch])):
                Image.fromarray(pred.class_map(res)).save(out / f"{f.stem}_classes.png")
                pred.draw(str(f), res, str(out / f"{f.stem}_overlay.png"))
        (out / "classes.json").write_text(json.dumps(pred.classes))
        print(f"{len(files)} images -> {out}/*_classes.png (class index per pixel), *_overlay.png")


if __name__ == "__main__":
    _cli.run_cli(main)
