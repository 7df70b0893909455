"""COCO-format datasets for detectron2: COCO's own names, or any set given by paths, checked before
training starts (a missing image or a malformed json is one clear error, not a crash at iteration N)."""
import json
from pathlib import Path

from ..data import DataError
from ..data.images import undecodable


def check_coco_json(json_file, image_root) -> dict:
    path = Path(json_file)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        js = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed json ({e.msg} at line {e.lineno}, column {e.colno})") from None
    for field in ("images", "annotations", "categories"):
        if not isinstance(js.get(field), list):
            raise DataError(f"{path}: not a COCO instances file (no '{field}' list)")
    missing = [im.get("file_name") for im in js["images"]
               if not (Path(image_root) / str(im.get("file_name"))).is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) missing under {image_root}, e.g. {missing[0]}")
    bad = undecodable([Path(image_root) / str(im["file_name"]) for im in js["images"]])
    if bad:
        raise DataError(f"{path}: {len(bad)} image(s) under {image_root} cannot be decoded, e.g. "
                        f"{Path(bad[0][0]).name} ({bad[0][1]})")
    image_ids = {im.get("id") for im in js["images"]}
    orphan = [a.get("id") for a in js["annotations"] if a.get("image_id") not in image_ids]
    if orphan:
        raise DataError(f"{path}: annotation {orphan[0]} (and {len(orphan) - 1} more) points at an image_id not in "
                        f"'images'")
    for a in js["annotations"]:
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(f"{path}: annotation {a.get('id')} has no [x, y, width, height] bbox (got {box!r})")
        if box[2] <= 0 or box[3] <= 0:
            raise DataError(f"{path}: annotation {a.get('id')} has a box of width {box[2]} and height {box[3]} "
                            f"(both must be > 0)")
    ids = {c["id"] for c in js["categories"]}
    bad = [a["id"] for a in js["annotations"] if a.get("category_id") not in ids]
    if bad:
        raise DataError(f"{path}: annotation {bad[0]} has a category_id not in 'categories'")
    has_mask(js, path)  # a mixed set is an error here, not in a loader worker
    return js


def has_mask(js: dict, path="annotations") -> bool:
    """True if every annotation has a `segmentation` (polygons or RLE), False if none has one (a
    box-only set: ViTDet runs without its mask head). Some with and some without is a DataError."""
    with_mask = [bool(a.get("segmentation")) for a in js["annotations"]]
    if any(with_mask) and not all(with_mask):
        first = next(a["id"] for a, m in zip(js["annotations"], with_mask) if not m)
        raise DataError(f"{path}: {with_mask.count(False)} of {len(with_mask)} annotations have no 'segmentation' "
                        f"(e.g. id {first}); give every annotation a mask, or drop all masks for box-only training")
    return any(with_mask)


def boxes_only(cfg) -> None:
    """Switch a ViTDet Mask R-CNN LazyConfig to Faster R-CNN: no mask pooler/head, the loader keeps
    its crop boxes instead of recomputing them from masks; COCOEvaluator then reports box AP only."""
    heads = cfg.model.roi_heads
    heads.mask_in_features = heads.mask_pooler = heads.mask_head = None
    cfg.dataloader.train.mapper.use_instance_mask = False
    cfg.dataloader.train.mapper.recompute_boxes = False
    cfg.dataloader.evaluator.tasks = ("bbox",)


def json_safe(results: dict) -> dict:
    """detectron2's metrics as valid JSON. NaN means two things there: no prediction at all (every
    overall AP of a task NaN; scored 0 here: the model found nothing) and not measurable (APl of a set
    without large objects, the AP of a class absent from the validation set: null)."""
    def task(ms: dict) -> dict:
        overall = [v for k, v in ms.items() if "-" not in k and isinstance(v, float)]
        nothing = bool(overall) and all(v != v for v in overall)
        return {k: (0.0 if nothing and "-" not in k else None) if isinstance(v, float) and v != v else v
                for k, v in ms.items()}
    return {t: task(ms) if isinstance(ms, dict) else ms for t, ms in results.items()}


def register_coco_from_paths(name: str, json_file, image_root) -> None:
    """Register a COCO-format instances set (checked before by `check_coco_json`) under `name` with
    detectron2's own loader."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(image_root))
