"""Fashion-MNIST scenes: a real-image detection / segmentation set that trains on 2 CPU cores.

Each canvas is a random crop of one of scikit-image's photos (textured, natural backgrounds) with 2-6
Fashion-MNIST items pasted on it at log-uniform sizes (COCO small, medium and large all occur),
tinted, overlapping allowed (later items occlude earlier ones). An item's instance mask is its own
pixels; what stays visible of it gives its polygons, box and area. Train scenes use only items of
Fashion-MNIST's training split, val scenes only items of its test split. Everything follows from the
seed. One call writes every view of the same scenes:

    root/train/*.jpg, root/val/*.jpg      images (pretraining: --data-path root/train, no labels)
    root/annotations/{train,val}.json     COCO instances, polygons, category ids 1..10
    root/masks/{train,val}/*.png          semantic index masks: 0 = background, 1..10 = items
    root/classes.txt                      background + the 10 item names (mae-transfer seg --classes)
    root/crops/{train,val}/<class>/*.png  every object cropped from its scene with some context (classification)

The items come from a subset vendored in `assets/` (first 400 per class of the training split, first
100 per class of the test split; MIT, notice beside it), or from the full set with `fashion_root`.
"""
import argparse
import gzip
import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from .images import DataError, demo_photos

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
SUBSET = Path(__file__).parent / "assets" / "fashion_mnist_subset.npz"
_IDX = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str, root=None) -> Tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N]) of split "train" or "test": the vendored subset, or the
    full set from `root` (e.g. /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)."""
    if root is None:
        with np.load(SUBSET) as z:
            return z[f"{split}_images"], z[f"{split}_labels"]
    files = [Path(root) / n for n in _IDX[split]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST file not found: {missing[0]}")
    return _read_idx(files[0]), _read_idx(files[1])


def _background(rng: np.random.Generator, photos, size: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    side = int(min(photo.size) * rng.uniform(0.3, 1.0))
    x0, y0 = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
    return np.asarray(photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)).copy()


def compose(rng: np.random.Generator, photos, items: np.ndarray, labels: np.ndarray, size: int = 128,
            n_items=(2, 6), min_side: int = 16, min_visible: float = 0.3):
    """One scene: (RGB image [size, size, 3] uint8, [(class index 0..9, visible mask [size, size] bool)])."""
    canvas = _background(rng, photos, size)
    placed: List[Tuple[int, np.ndarray, int]] = []  # (class, visible mask, full area)
    for _ in range(int(rng.integers(n_items[0], n_items[1] + 1))):
        k = int(rng.integers(len(items)))
        side = int(round(np.exp(rng.uniform(np.log(min_side), np.log(size)))))  # log-uniform: all COCO scales
        grey = np.asarray(Image.fromarray(items[k]).resize((side, side), Image.BILINEAR), dtype=np.float32)
        x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        mask = np.zeros((size, size), bool)
        mask[y:y + side, x:x + side] = grey > 25  # the item's own pixels (Fashion-MNIST's background is 0)
        if not mask.any():
            continue
        tint = rng.uniform(0.35, 1.0, 3) * 255  # an item keeps its own shading, in a random colour
        patch = np.zeros((size, size, 3), np.float32)
        patch[y:y + side, x:x + side] = (grey / 255)[..., None] * tint
        canvas[mask] = patch[mask].astype(np.uint8)
        placed = [(c, m & ~mask, a) for c, m, a in placed]
        placed.append((int(labels[k]), mask, int(mask.sum())))
    kept = [(c, m) for c, m, a in placed if m.sum() >= max(16, min_visible * a)]
    return canvas, kept


def polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a binary mask as COCO polygons (3 points or more)."""
    import cv2  # opencv comes with mmcv-lite (the seg extra): only for the scene generator

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def make_scenes(root, n_train: int = 400, n_val: int = 100, size: int = 128, seed: int = 0,
                fashion_root: Optional[str] = None, items_per_class: Optional[int] = None) -> dict:
    """Write the scene set under `root` (layout in the module docstring); returns its paths.
    `items_per_class` caps the classification crops written per class and split (a smaller set)."""
    root, photos = Path(root), demo_photos()
    cats = [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(CLASSES)]
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(("background",) + CLASSES) + "\n")
    out = {"root": str(root), "classes": str(root / "classes.txt")}
    for split, source, n in (("train", "train", n_train), ("val", "test", n_val)):
        items, labels = fashion_mnist(source, fashion_root)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])  # splits independent of each other
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            canvas, inst = compose(rng, photos, items, labels, size)
            name = f"{split}_{i:05d}"
            Image.fromarray(canvas).save(root / split / f"{name}.jpg", quality=92)
            semantic = np.zeros((size, size), np.uint8)
            images.append({"id": i + 1, "file_name": f"{name}.jpg", "height": size, "width": size})
            for c, m in inst:
                semantic[m] = c + 1
                polys = polygons(m)
                if not polys:
                    continue
                ys, xs = np.nonzero(m)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                             "segmentation": polys, "area": float(m.sum()),
                             "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                      float(ys.max() - ys.min() + 1)]})
            Image.fromarray(semantic).save(root / "masks" / split / f"{name}.png")
        (root / "annotations").mkdir(exist_ok=True)
        js = root / "annotations" / f"{split}.json"
        js.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        write_crops(js, root / split, root / "crops" / split, items_per_class)
        out.update({f"{split}_images": str(root / split), f"{split}_json": str(js),
                    f"{split}_masks": str(root / "masks" / split), f"{split}_crops": str(root / "crops" / split)})
    return out


def write_crops(coco_json, images_dir, out_dir, per_class: Optional[int] = None, context: float = 1.25) -> None:
    """Each annotated object as `out_dir/<class>/<ann id>.png`: a square of `context` x its box's longer
    side around the box centre, shifted to stay inside the image (an object-centric classification set)."""
    js = json.loads(Path(coco_json).read_text())
    names = {c["id"]: c["name"] for c in js["categories"]}
    files = {im["id"]: im["file_name"] for im in js["images"]}
    count = {c: 0 for c in names}
    for name in names.values():
        (Path(out_dir) / name).mkdir(parents=True, exist_ok=True)
    opened = {}
    for a in js["annotations"]:
        c = a["category_id"]
        if per_class is not None and count[c] >= per_class:
            continue
        count[c] += 1
        if a["image_id"] not in opened:
            opened = {a["image_id"]: Image.open(Path(images_dir) / files[a["image_id"]]).convert("RGB")}
        img = opened[a["image_id"]]
        x, y, w, h = a["bbox"]
        side = min(max(w, h) * context, *img.size)
        x0 = min(max(x + w / 2 - side / 2, 0), img.width - side)
        y0 = min(max(y + h / 2 - side / 2, 0), img.height - side)
        img.crop((round(x0), round(y0), round(x0 + side), round(y0 + side))).save(
            Path(out_dir) / names[c] / f"{a['id']:06d}.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--train", type=int, default=400, help="training scenes (items of Fashion-MNIST's train split)")
    p.add_argument("--val", type=int, default=100, help="validation scenes (items of its test split)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fashion-root", help="the full Fashion-MNIST (idx .gz files) instead of the vendored subset")
    a = p.parse_args(argv)
    print(json.dumps(make_scenes(a.root, a.train, a.val, a.size, a.seed, a.fashion_root), indent=1))


if __name__ == "__main__":  # python -m mae_transfer.data.scenes ROOT [--train N --val N]
    main()
