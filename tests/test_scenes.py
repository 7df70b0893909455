"""The Fashion-MNIST scene set: split separation, masks/boxes/polygons that agree, determinism."""
import gzip
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mae_transfer.data import scenes


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory):
    return scenes.make_scenes(tmp_path_factory.mktemp("scenes") / "s", n_train=24, n_val=12, size=96, seed=3)


def test_vendored_subset_is_fashion_mnist():
    x, y = scenes.fashion_mnist("train")
    assert x.shape == (4000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [400] * 10
    xt, yt = scenes.fashion_mnist("test")
    assert xt.shape == (1000, 28, 28) and np.bincount(yt).tolist() == [100] * 10


def test_train_scenes_use_only_train_items_and_val_only_test_items(tmp_path):
    """Train split items are all of classes 0-4, test split items of classes 5-9: the categories in
    each split's annotations then show which split its items came from."""
    rng = np.random.default_rng(0)
    blob = (rng.uniform(size=(28, 28)) > 0.3) * 200
    for split, classes in (("train", range(5)), ("t10k", range(5, 10))):
        labels = np.repeat(list(classes), 4)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.stack([blob] * len(labels)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    out = scenes.make_scenes(tmp_path / "s", n_train=15, n_val=10, size=64, fashion_root=str(tmp_path))
    cats = {s: {a["category_id"] for a in json.loads(open(out[f"{s}_json"]).read())["annotations"]}
            for s in ("train", "val")}
    assert cats["train"] and cats["train"] <= {1, 2, 3, 4, 5}
    assert cats["val"] and cats["val"] <= {6, 7, 8, 9, 10}
    crops = {s: {p.parent.name for p in (tmp_path / "s/crops" / s).rglob("*.png")} for s in ("train", "val")}
    assert crops["train"] <= set(scenes.CLASSES[:5]) and crops["val"] <= set(scenes.CLASSES[5:])
    n_ann = {s: len(json.loads(open(out[f"{s}_json"]).read())["annotations"]) for s in ("train", "val")}
    assert all(len(list((tmp_path / "s/crops" / s).rglob("*.png"))) == n_ann[s] for s in ("train", "val"))


def test_masks_boxes_and_polygons_agree(scene_set):
    areas = []
    for split in ("train", "val"):
        js = json.loads(open(scene_set[f"{split}_json"]).read())
        assert [c["id"] for c in js["categories"]] == list(range(1, 11))
        by_image = {}
        for a in js["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for img in js["images"]:
            stem = img["file_name"][:-4]
            sem = np.asarray(Image.open(f"{scene_set[f'{split}_masks']}/{stem}.png"))
            assert sem.shape == (img["height"], img["width"]) and sem.max() <= 10
            anns = by_image.get(img["id"], [])
            assert 1 <= len(anns) <= 6
            union = np.zeros(sem.shape, bool)
            for a in anns:
                rle = mask_utils.frPyObjects(a["segmentation"], img["height"], img["width"])
                poly = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
                x, y, w, h = a["bbox"]
                ys, xs = np.nonzero(poly)
                # the polygon (outer contour of the visible pixels) lies in the box
                assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
                # and covers the pixels the semantic mask gives this instance's class
                inside = sem[int(y):int(y + h), int(x):int(x + w)] == a["category_id"]
                assert inside.sum() >= 0.6 * a["area"]
                assert a["area"] <= w * h
                union |= poly
                areas.append(a["area"])
            # semantic foreground and the instances' polygons cover about the same pixels
            fg = sem > 0
            assert (fg & union).sum() >= 0.8 * fg.sum()
    areas = np.array(areas)
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any()  # small and medium


def test_scale_range_covers_coco_large():
    rng = np.random.default_rng(0)
    x, y = scenes.fashion_mnist("train")
    from mae_transfer.data import demo_photos

    photos = demo_photos()
    areas = [m.sum() for _ in range(150) for _, m in scenes.compose(rng, photos, x, y, size=128)[1]]
    assert max(areas) >= 96 ** 2 and min(areas) < 32 ** 2


def test_same_seed_same_files_other_seed_other_scenes(tmp_path, scene_set):
    again = scenes.make_scenes(tmp_path / "again", n_train=24, n_val=12, size=96, seed=3)
    for split in ("train", "val"):
        assert open(again[f"{split}_json"]).read() == open(scene_set[f"{split}_json"]).read()
        a = np.asarray(Image.open(f"{again[f'{split}_images']}/{split}_00003.jpg"))
        b = np.asarray(Image.open(f"{scene_set[f'{split}_images']}/{split}_00003.jpg"))
        assert np.array_equal(a, b)
    other = scenes.make_scenes(tmp_path / "other", n_train=4, n_val=2, size=96, seed=4)
    assert open(other["val_json"]).read() != open(scene_set["val_json"]).read()
