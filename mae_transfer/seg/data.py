"""Segmentation sets for mmseg by path, like detection takes any COCO set:

* `--train-images/--train-masks/--val-images/--val-masks DIR --classes FILE`: masks are PNGs named
  after their image's stem holding class indices (grey or palette PNG), 255 ignored; label 0 is a
  class unless `--zero-is-other` (then 1..N are the N classes of FILE and 0 is ignored, ADE20K's way).
* `--data-root` recognises VOC's layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/
  {train,val}.txt: mmseg's PascalVOCDataset, 21 classes, 0 = background is a class) and ADE20K's
  (images/{training,validation}: the config's own dataset).
Everything is checked before training: a missing mask, a file that does not decode, a colour (RGB)
mask, a mask whose size differs from its image, a label outside the classes -- one line each."""
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from ..data.images import EXIF_ORIENTATION, IMG_EXTENSIONS, undecodable, upright_size
from ..errors import DataError
from ..reading import read_classes, read_lines

MASK_MODES = ("1", "L", "P", "I", "I;16")  # one channel of class indices (palette PNGs: the index, not the colour)


def walk(node, fn):
    """Apply fn to every dict in a nested config."""
    if isinstance(node, dict):
        fn(node)
        for v in node.values():
            walk(v, fn)
    elif isinstance(node, (list, tuple)):
        for v in node:
            walk(v, fn)


def plain_bn(model_cfg) -> None:
    """SyncBN -> BN everywhere in a model config (SyncBN runs on CUDA only)."""
    walk(model_cfg, lambda d: d.update(type="BN") if d.get("type") == "SyncBN" else None)


def _suffix(folder: Path) -> str:
    exts = Counter(p.suffix.lower() for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
    if not exts:
        raise DataError(f"no images in {folder}")
    return exts.most_common(1)[0][0]


def set_num_classes(cfg, n: int, reduce_zero_label: bool) -> None:
    """Heads, datasets and every LoadAnnotations step follow the class list."""
    for head in ("decode_head", "auxiliary_head"):
        if cfg.model.get(head):
            cfg.model[head].num_classes = n
    walk(cfg._cfg_dict if hasattr(cfg, "_cfg_dict") else cfg,
          lambda d: d.update(reduce_zero_label=reduce_zero_label) if d.get("type") == "LoadAnnotations" else None)


def configure_paths(cfg, args) -> None:
    """Point cfg's train/val/test datasets at the layout the arguments name."""
    splits = {"train": (args.train_images, args.train_masks), "val": (args.val_images, args.val_masks)}
    if any(v for pair in splits.values() for v in pair):
        if not all(v for pair in splits.values() for v in pair) or not args.classes:
            raise DataError("--train-images, --train-masks, --val-images, --val-masks and --classes go together")
        classes, reduce = read_classes(args.classes), bool(args.zero_is_other)
        for split, (img, msk) in splits.items():
            for dl in ([f"{split}_dataloader"] + (["test_dataloader"] if split == "val" else [])):
                cfg[dl].dataset = dict(
                    type="BaseSegDataset", data_root="", metainfo=dict(classes=tuple(classes)),
                    data_prefix=dict(img_path=str(Path(img).resolve()), seg_map_path=str(Path(msk).resolve())),
                    img_suffix=_suffix(Path(img)), seg_map_suffix=".png", reduce_zero_label=reduce,
                    pipeline=cfg[dl].dataset.pipeline)
        set_num_classes(cfg, len(classes), reduce)
        return
    if not args.data_root:
        return
    root = Path(args.data_root)
    if (root / "JPEGImages").is_dir() and (root / "ImageSets/Segmentation").is_dir():  # Pascal VOC
        for dl, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
            cfg[dl].dataset = dict(type="PascalVOCDataset", data_root=str(root),
                                   ann_file=f"ImageSets/Segmentation/{split}.txt",
                                   data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                                   pipeline=cfg[dl].dataset.pipeline)
        set_num_classes(cfg, 21, False)
        return
    for dl in ("train_dataloader", "val_dataloader", "test_dataloader"):  # ADE20K's layout: the config's set
        cfg[dl].dataset.data_root = str(root)


def _items(ds) -> List[tuple]:
    """(image, mask) paths of a dataset config, as mmseg will list them."""
    root = Path(ds.get("data_root") or "")
    img_dir, ann_dir = root / ds.data_prefix.img_path, root / ds.data_prefix.seg_map_path
    if not img_dir.is_dir():
        raise DataError(f"images not found: {img_dir}")
    img_suffix = ds.get("img_suffix", ".jpg")
    if ds.get("ann_file"):
        ann = root / ds.ann_file
        if not ann.is_file():
            raise DataError(f"split file not found: {ann}")
        stems = read_lines(ann, "split file", DataError)
        imgs = [img_dir / (s + img_suffix) for s in stems]
        missing = [p for p in imgs if not p.is_file()]
        if missing:
            raise DataError(f"{ann} lists {len(missing)} image(s) missing from {img_dir}, e.g. {missing[0].name}")
    else:
        imgs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() == img_suffix)
    if not imgs:
        raise DataError(f"no {img_suffix} images in {img_dir}")
    return [(p, ann_dir / (p.stem + ds.get("seg_map_suffix", ".png"))) for p in imgs]


def check_data(cfg, splits: Sequence[str] = ("train", "val")) -> None:
    """Every image has a mask of its size, and every label is a class or 255 (or 0 under
    reduce_zero_label) -- checked before training rather than discovered at iteration N."""

    for split in splits:
        ds = cfg[f"{split}_dataloader"].dataset
        n_cls = _num_classes(ds, cfg)
        reduce = ds.get("reduce_zero_label", ds.get("type") == "ADE20KDataset")
        top = n_cls if reduce else n_cls - 1  # largest valid raw label
        items = _items(ds)
        missing = [ann for _, ann in items if not ann.is_file()]
        if missing:
            raise DataError(f"{len(missing)} mask(s) missing, e.g. {missing[0]} (masks are named by image stem)")
        bad = undecodable([p for pair in items for p in pair])
        if bad:
            raise DataError(f"{len(bad)} {split} file(s) cannot be decoded, e.g. {bad[0][0]} ({bad[0][1]})")
        for img, ann in items:
            with Image.open(img) as im, Image.open(ann) as m:
                size = upright_size(im)  # mmseg's decoder turns the image upright; the mask is read as stored
                if size != m.size or m.getexif().get(EXIF_ORIENTATION, 1) != 1:
                    turned = " upright (EXIF orientation applied)" if size != im.size else ""
                    tagged = " with an EXIF orientation" if size == m.size else ""
                    raise DataError(f"{ann}: mask is {m.size[0]}x{m.size[1]}{tagged}, its image {size[0]}x{size[1]}"
                                    f"{turned}: a mask is drawn on the upright image, and stored as drawn")
                if m.mode not in MASK_MODES:
                    raise DataError(f"{ann}: a {m.mode} image ({len(m.getbands())} channels); a mask holds one class "
                                    f"index per pixel (a grey or palette PNG)")
                labels = np.unique(np.asarray(m))
            bad = labels[(labels > top) & (labels != 255)]
            if bad.size:
                raise DataError(f"{ann}: label {int(bad[0])} is outside the {n_cls} classes "
                                f"(valid: {'1' if reduce else '0'}..{top}, 255 = ignore)")


def _num_classes(ds, cfg) -> int:
    classes: Optional[Sequence] = ds.get("metainfo", {}).get("classes")
    if classes:
        return len(classes)
    if ds.get("type") in ("PascalVOCDataset", "ADE20KDataset"):
        from mmseg import datasets  # importing mmseg's datasets registers them all: only for a stock set's class count
        return len(getattr(datasets, ds.type).METAINFO["classes"])
    return cfg.model.decode_head.num_classes
