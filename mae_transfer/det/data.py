"""COCO-format datasets for detectron2: COCO's own names, or any set given by paths, checked before
training starts (a missing image or a malformed json is one clear error, not a crash at iteration N)."""
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..data.images import probe_all
from ..errors import DataError
from ..reading import read_json, validate
from ..schemas import CocoInstances


def check_coco_json(json_file, image_root) -> dict:
    """A COCO instances file through its schema (`schemas.CocoInstances`: types, ids, references, finite
    positive boxes, file names inside `image_root`), then every image: present, decodable, and of the size the
    json says once its EXIF orientation is applied (detectron2's reader turns it upright and checks the same).
    Returns the parsed json; every problem is one DataError line."""
    path = Path(json_file)
    js = read_json(path, None, DataError, "annotation file")
    with open(path, "rb") as f:  # detectron2 and pycocotools read it again themselves, as plain UTF-8
        start = f.read(4)
    if start.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")) or b"\x00" in start:
        raise DataError(f"{path}: not plain UTF-8 (a byte-order mark, or UTF-16/32), which detectron2 cannot read; "
                        f"save it as UTF-8 without a BOM")
    validate(js, CocoInstances, DataError, str(path))
    root = Path(image_root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    files = [root / im["file_name"] for im in js["images"]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) missing under {root}, e.g. {missing[0].relative_to(root)}")
    probes = probe_all(files)
    bad = [(f, why) for f, (_, why) in zip(files, probes) if why]
    if bad:
        raise DataError(f"{path}: {len(bad)} image(s) under {root} cannot be decoded, e.g. {bad[0][0].name} "
                        f"({bad[0][1]})")
    for im, (size, _) in zip(js["images"], probes):
        if size != (im["width"], im["height"]):
            raise DataError(f"{path}: image {im['id']} ({im['file_name']}) is {size[0]}x{size[1]} upright (EXIF "
                            f"orientation applied), but the json says {im['width']}x{im['height']}")
    return js


def has_mask(js: dict, path="annotations") -> bool:
    """True if the annotations carry masks (polygons or RLE), False for a box-only set (ViTDet then runs
    without its mask head). The schema has made sure it is all or none."""
    return any(a.get("segmentation") for a in js["annotations"])


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

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(image_root))
