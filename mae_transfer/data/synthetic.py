"""Small labelled sets for the tests (the demo and the benchmark use the Fashion-MNIST scenes of
`scenes.py`): coloured shapes pasted on natural-image backgrounds, written as a COCO-format instance set
(`make_coco_shapes`) or an ADE20K-layout semantic set (`make_ade_shapes`)."""
import json
import math
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .images import demo_photos

SHAPES = ("circle", "square", "triangle")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    n = {"circle": 32, "square": 4, "triangle": 3}[kind]
    start = angle + (math.pi / 4 if kind == "square" else 0)
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _scene(rng: np.random.Generator, photos, size: int, max_shapes: int):
    """One image: a random crop of a photo, 1..max_shapes non-overlapping shapes on it."""
    photo = photos[rng.integers(len(photos))]
    side = int(min(photo.size) * rng.uniform(0.3, 1.0))
    x0, y0 = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
    img = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    shapes, boxes = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _try in range(20):
            r = rng.uniform(0.08, 0.2) * size
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes):
                break
        else:
            continue
        kind = SHAPES[rng.integers(len(SHAPES))]
        poly = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
        draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), outline=(255, 255, 255))
        boxes.append(box)
        shapes.append((kind, poly))
    return img, shapes


def make_coco_shapes(root, n_train: int = 200, n_val: int = 50, size: int = 128, max_shapes: int = 4,
                     seed: int = 0, extras: bool = False) -> dict:
    """Write `root/{train,val}/*.jpg` and `root/annotations/{train,val}.json`; returns the paths.

    extras=True adds what real COCO files contain and loaders must survive: a category that never
    occurs, images without annotations, and crowd (RLE) annotations."""
    root, photos = Path(root), demo_photos()
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES)]
    if extras:
        cats.append({"id": 7, "name": "hexagon", "supercategory": "shape"})  # never occurs
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, shapes = _scene(rng, photos, size, max_shapes)
            if extras and i % 10 == 9:
                shapes = []  # an image without annotations
                img = photos[0].resize((size, size))
            name = f"{split}_{i:05d}.jpg"
            img.save(root / split / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
            for kind, poly in shapes:
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                area = 0.5 * abs(sum(xs[k] * ys[k - 1] - xs[k - 1] * ys[k] for k in range(len(xs))))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": SHAPES.index(kind) + 1,
                             "segmentation": [[round(v, 2) for p in poly for v in p]], "area": area,
                             "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0})
            if extras and i % 10 == 3:  # a crowd region (uncompressed RLE) in the top-left corner
                m = np.zeros((size, size), dtype=np.uint8, order="F")
                m[:8, :8] = 1
                counts, flat, cur, run = [], m.flatten(order="F"), 0, 0
                for v in flat:
                    if v != cur:
                        counts.append(run)
                        cur, run = v, 0
                    run += 1
                counts.append(run)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 1,
                             "segmentation": {"counts": counts, "size": [size, size]}, "area": 64.0,
                             "bbox": [0, 0, 8, 8]})
        (root / "annotations").mkdir(exist_ok=True)
        js = root / "annotations" / f"{split}.json"
        js.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        out[f"{split}_json"], out[f"{split}_images"] = str(js), str(root / split)
    return out


def make_ade_shapes(root, n_train: int = 200, n_val: int = 50, size: int = 128, max_shapes: int = 4,
                    seed: int = 0) -> dict:
    """ADE20K layout: `images/{training,validation}/*.jpg`, `annotations/{...}/*.png` with 0 =
    background ("other", ignored under reduce_zero_label) and 1..3 = circle, square, triangle."""
    root, photos = Path(root), demo_photos()
    rng = np.random.default_rng(seed)
    for split, n in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, shapes = _scene(rng, photos, size, max_shapes)
            label = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(label)
            for kind, poly in shapes:
                draw.polygon(poly, fill=SHAPES.index(kind) + 1)
            img.save(root / "images" / split / f"ADE_{split}_{i:05d}.jpg", quality=92)
            label.save(root / "annotations" / split / f"ADE_{split}_{i:05d}.png")
    return {"data_root": str(root), "classes": SHAPES}


if __name__ == "__main__":  # python -m mae_transfer.data.synthetic {coco,ade} ROOT [n_train n_val]
    kind, root, *n = sys.argv[1:]
    make = {"coco": make_coco_shapes, "ade": make_ade_shapes}[kind]
    print(json.dumps(make(root, *map(int, n))))
