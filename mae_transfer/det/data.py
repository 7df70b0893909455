"""COCO-format datasets for detectron2: COCO's own names, or any set given by paths, checked before
training starts (a missing image or a malformed json is one clear error, not a crash at iteration N)."""
import json
from pathlib import Path

from ..data import DataError


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
    ids = {c["id"] for c in js["categories"]}
    bad = [a["id"] for a in js["annotations"] if a.get("category_id") not in ids]
    if bad:
        raise DataError(f"{path}: annotation {bad[0]} has a category_id not in 'categories'")
    return js


def register_coco_from_paths(name: str, json_file, image_root) -> str:
    """Register (once) a COCO-format instances set under `name` with detectron2's own loader."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    check_coco_json(json_file, image_root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name
