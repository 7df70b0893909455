"""Property-based tests (hypothesis): valid inputs -- a COCO json, a classes file, settings.json, export.json,
checkpoints of each layout, command lines -- mutated (types, missing keys, extra nesting, NaN/Inf, huge values,
encodings, paths), then given to the commands as users type them. For every example: exit 2, one `error:` line,
no traceback, no file created or changed. Seeded (derandomize) and bounded, so the fast tier stays fast."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import FUZZ, refused, tree
from hypothesis import given
from hypothesis import strategies as st

# ------------------------------------------------------------------------------------------------ COCO
BAD_ID = st.sampled_from([None, "1", 1.5, True, -1, [1], {}, 2**70])
BAD_SIZE = st.sampled_from([None, "128", 0, -5, 1.5, True, [128], 10**9])
BAD_NAME = st.sampled_from([None, 5, "", "../train/x.jpg", "/etc/hostname", "a/../../b.jpg", "nope.jpg", "C:\\x.jpg",
                            ["x.jpg"]])
BAD_BOX = st.sampled_from([None, "1,2,3,4", [1, 2, 3], [1, 2, 3, 4, 5], ["a", 0, 1, 1], [0, 0, 0, 5], [0, 0, 5, -1],
                           [0, 0, 1e400, 5], [[0, 0, 5, 5]], {"x": 0}])
BAD_SEG = st.sampled_from(["abc", [[1, 2, 3]], [[1, 2, "a", 4, 5, 6]], [[1, 2, 3, 4, 5, 6, 7]], {"counts": 5},
                           [[1, 2, 3, 4, 5, 1e400]], 7])


@st.composite
def broken_coco(draw, js: dict) -> bytes:
    """One mutation of a valid COCO instances file that makes it invalid, as the bytes of the file."""
    js = copy.deepcopy(js)
    im, an, ca = (draw(st.integers(0, len(js[k]) - 1)) for k in ("images", "annotations", "categories"))
    how = draw(st.sampled_from(["image id", "width", "height", "file_name", "ann id", "image_id", "category_id",
                                "bbox", "segmentation", "cat id", "cat name", "drop key", "top", "duplicate id",
                                "dangling", "mixed masks", "size mismatch", "bytes", "nesting", "no categories",
                                "no images"]))
    if how == "image id":
        js["images"][im]["id"] = draw(BAD_ID)
    elif how in ("width", "height"):
        js["images"][im][how] = draw(BAD_SIZE)
    elif how == "file_name":
        js["images"][im]["file_name"] = draw(BAD_NAME)
    elif how == "ann id":
        js["annotations"][an]["id"] = draw(BAD_ID)
    elif how in ("image_id", "category_id"):
        js["annotations"][an][how] = draw(BAD_ID)
    elif how == "bbox":
        js["annotations"][an]["bbox"] = draw(BAD_BOX)
    elif how == "segmentation":
        js["annotations"][an]["segmentation"] = draw(BAD_SEG)
    elif how == "cat id":
        js["categories"][ca]["id"] = draw(BAD_ID)
    elif how == "cat name":
        js["categories"][ca]["name"] = draw(st.sampled_from([None, "", 3, ["a"]]))
    elif how == "drop key":
        part, i = draw(st.sampled_from([("images", im), ("annotations", an), ("categories", ca)]))
        need = {"images": ["id", "file_name", "width", "height"], "annotations": ["id", "image_id", "category_id",
                                                                                  "bbox"], "categories": ["id", "name"]}
        del js[part][i][draw(st.sampled_from(need[part]))]
    elif how == "top":
        key = draw(st.sampled_from(["images", "annotations", "categories"]))
        change = draw(st.sampled_from(["delete", "dict", "str", "null", "wrap all"]))
        if change == "wrap all":
            js = [js]
        elif change == "delete":
            del js[key]
        else:
            js[key] = {"dict": {}, "str": "x", "null": None}[change]
    elif how == "duplicate id":
        part = draw(st.sampled_from(["images", "annotations", "categories"]))
        js[part].append(copy.deepcopy(js[part][0]))
        if part == "images":
            js[part][-1]["file_name"] = js["images"][-2]["file_name"] if len(js["images"]) > 1 else "dup.jpg"
    elif how == "dangling":
        js["annotations"][an][draw(st.sampled_from(["image_id", "category_id"]))] = 999_999
    elif how == "mixed masks":
        js["annotations"][an].pop("segmentation", None)
        if len(js["annotations"]) == 1:
            js["annotations"].append({**copy.deepcopy(js["annotations"][0]), "id": 999_998,
                                      "segmentation": [[0, 0, 5, 0, 5, 5]]})
    elif how == "size mismatch":
        js["images"][im]["width"] += draw(st.integers(1, 50))
    elif how == "no categories":
        js["categories"] = []
    elif how == "no images":
        js["images"], js["annotations"] = [], []
    if how == "nesting":
        return b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    data = json.dumps(js).encode()
    if how == "bytes":
        change = draw(st.sampled_from(["truncate", "latin-1", "nan", "garbage", "empty", "bom", "utf-16"]))
        if change == "truncate":
            data = data[: draw(st.integers(0, data.rindex(b"}") - 1))]
        elif change == "latin-1":
            data = data.replace(b'"name": "', b'"name": "caf\xe9 ', 1)
        elif change == "nan":
            data = data.replace(b'"bbox": [', b'"bbox": [NaN, ', 1)
        elif change == "garbage":
            data = bytes(draw(st.binary(min_size=1, max_size=64))) + data
        elif change == "bom":  # valid JSON, but detectron2 reads the file again as plain UTF-8
            data = b"\xef\xbb\xbf" + data
        elif change == "utf-16":
            data = data.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
        else:
            data = b""
    return data


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    pytest.importorskip("detectron2")
    from mae_transfer.data.synthetic import make_coco_shapes

    return make_coco_shapes(tmp_path_factory.mktemp("coco"), n_train=3, n_val=1)


@pytest.mark.slow
def test_every_broken_coco_json_is_one_line_before_anything_is_written(coco, tmp_path_factory, capsys):
    base = json.loads(Path(coco["train_json"]).read_text())
    root = Path(coco["train_images"]).parent

    @FUZZ
    @given(data=broken_coco(base))
    def check(data):
        work = tmp_path_factory.mktemp("case")
        (work / "train.json").write_bytes(data)
        before, out = tree(root), work / "out"
        line = refused(capsys, ["det", "--config", "tiny_cpu", "--train-json", str(work / "train.json"),
                                "--train-images", coco["train_images"], "--val-json", coco["val_json"],
                                "--val-images", coco["val_images"], "--output-dir", str(out)])
        assert "train.json" in line
        assert not out.exists() and tree(root) == before
    check()


# ------------------------------------------------------------------------------------------- classes
@st.composite
def broken_classes(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(["cat", "dog", "car", "sky"]), min_size=1, max_size=4, unique=True))
    how = draw(st.sampled_from(["empty", "blank", "duplicate", "nul", "latin-1", "utf-16 no bom", "binary"]))
    text = "\n".join(names) + "\n"
    if how == "empty":
        return b""
    if how == "blank":
        return b" \n\n\t\n" * draw(st.integers(1, 3))
    if how == "duplicate":
        return (text + draw(st.sampled_from(names)) + "\n").encode()
    if how == "nul":
        return text.encode() + b"\x00bad\n"
    if how == "latin-1":
        return (text + "caf\xe9\n").encode("latin-1")
    if how == "utf-16 no bom":
        return text.encode("utf-16-le")
    return bytes([0xff, 0xfe, 0xfd]) + draw(st.binary(min_size=1, max_size=32)) + b"\xff"


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    pytest.importorskip("mmseg")
    from mae_transfer.data.synthetic import make_ade_shapes

    root = Path(make_ade_shapes(tmp_path_factory.mktemp("ade"), n_train=2, n_val=1)["data_root"])
    return {"--train-images": root / "images/training", "--train-masks": root / "annotations/training",
            "--val-images": root / "images/validation", "--val-masks": root / "annotations/validation"}


def test_every_broken_classes_file_is_one_line(seg_set, tmp_path_factory, capsys):
    @FUZZ
    @given(data=broken_classes())
    def check(data):
        work = tmp_path_factory.mktemp("case")
        (work / "classes.txt").write_bytes(data)
        out = work / "out"
        argv = ["seg", "--config", "tiny_cpu", "--classes", str(work / "classes.txt"), "--output-dir", str(out)]
        refused(capsys, argv + [str(x) for kv in seg_set.items() for x in kv])
        assert not out.exists()
    check()


@given(names=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]),
                              min_size=1, max_size=8), min_size=1, max_size=5, unique=True),
       codec=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
       newline=st.sampled_from(["\n", "\r\n"]))
@FUZZ
def test_classes_files_in_any_encoding_with_a_bom_read_the_same(tmp_path_factory, names, codec, newline):
    from mae_transfer.reading import read_classes

    names = [n.strip() for n in names]
    if len(set(names)) < len(names) or not all(names) or any(c in n for n in names for c in "\x85\x1c\x1d\x1e"):
        return  # not a list of distinct one-line names
    p = tmp_path_factory.mktemp("c") / "classes.txt"
    p.write_bytes(("\n" + newline.join(names) + newline + "\n").encode(codec))
    assert read_classes(p) == names


# ----------------------------------------------------------------------------- settings.json (resume)
@pytest.fixture(scope="module")
def held_run(tmp_path_factory):
    """A folder holding a (pretend) finished pretraining run and the settings it was started with."""
    from mae_transfer import outputs, results

    d = tmp_path_factory.mktemp("run")
    config = Path(__file__).parents[1] / "mae_transfer/configs/pretrain/demo_tiny.py"
    run = results.settings(config.resolve(), 0, "mae_vit_tiny_patch8", data=[None])
    outputs.write_json(d / "settings.json", run)
    (d / "result.json").write_text("{}")
    torch.save({"model": {}}, d / "checkpoint-last.pth")
    return d, run


@st.composite
def damaged_settings(draw, run: dict) -> bytes:
    how = draw(st.sampled_from(["truncate", "garbage", "list", "unknown key", "type", "nan", "null value", "utf-16"]))
    obj = dict(run)
    key = draw(st.sampled_from([k for k, v in run.items() if v is not None]))
    if how == "list":
        obj = [obj]
    elif how == "unknown key":
        obj[draw(st.sampled_from(["sed", "Seed", "extra", ""]))] = "0"
    elif how == "type":
        obj[key] = draw(st.sampled_from([0, 1.5, True, ["x"], {"a": 1}]))
    elif how == "null value":
        obj[key] = None
    data = json.dumps(obj).encode()
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 2))]
    elif how == "garbage":
        data = draw(st.binary(min_size=1, max_size=40)) + b"\xff"
    elif how == "nan":
        data = data.replace(b'"seed": "0"', b'"seed": NaN')
    elif how == "utf-16":
        obj[key] = "changed"
        data = json.dumps(obj).encode("utf-16")
    return data


def test_a_damaged_settings_file_refuses_resume_and_changes_nothing(held_run, capsys):
    d, run = held_run
    original = (d / "settings.json").read_bytes()

    @FUZZ
    @given(data=damaged_settings(run))
    def check(data):
        (d / "settings.json").write_bytes(data)
        before = {k: v for k, v in tree(d).items() if k != ".lock"}
        line = refused(capsys, ["pretrain", "--config", "demo_tiny", "--output-dir", str(d), "--resume"])
        assert "settings" in line and "--allow-changes" in line, line
        assert {k: v for k, v in tree(d).items() if k != ".lock"} == before
    try:
        check()
    finally:
        (d / "settings.json").write_bytes(original)
    (d / "settings.json").unlink()
    assert "is missing" in refused(capsys, ["pretrain", "--config", "demo_tiny", "--output-dir", str(d), "--resume"])
    assert not (d / "settings.json").exists()
    (d / "settings.json").write_bytes(original)


# -------------------------------------------------------------------------------------- command lines
FIELDS = ["epochs", "blr", "mask_ratio", "batch_size", "norm_pix_loss", "seed", "warmup_epochs", "amp"]


@st.composite
def bad_command_line(draw):
    how = draw(st.sampled_from(["typo key", "bad value", "twice", "seed flag", "unknown flag", "bad bool"]))
    if how == "typo key":
        key = draw(st.sampled_from(FIELDS))
        i = draw(st.integers(0, len(key) - 1))
        return [f"{key[:i] + key[i + 1:] + 'x'}=1"]
    if how == "bad value":
        key, value = draw(st.sampled_from([("epochs", "1.5"), ("epochs", "0"), ("blr", "nan"), ("blr", "-1"),
                                           ("mask_ratio", "1"), ("mask_ratio", "inf"), ("batch_size", "abc"),
                                           ("seed", "-1"), ("seed", str(2**32)), ("seed", "1e3"), ("amp", "fp8"),
                                           ("warmup_epochs", "-3"), ("mask_ratio", "(0.5,)")]))
        return [f"{key}={value}"]
    if how == "twice":
        key = draw(st.sampled_from(FIELDS[:4]))
        return [f"{key}=1", f"{key}=2"]
    if how == "seed flag":
        return ["--seed", draw(st.sampled_from(["-1", str(2**32), "1.5", "x", str(2**70), ""]))]
    if how == "unknown flag":
        return [draw(st.sampled_from(["--epochs", "--seeds", "--output", "--resum", "--num-gpu", "--out"])), "1"]
    return [f"norm_pix_loss={draw(st.sampled_from(['Ture', 'yes', '2', 'none', '']))}"]


def test_every_mistyped_command_line_is_one_line_and_writes_nothing(tmp_path_factory, capsys):
    @FUZZ
    @given(extra=bad_command_line(), command=st.sampled_from(["pretrain", "finetune", "linprobe"]))
    def check(extra, command):
        case = tmp_path_factory.mktemp("case")
        out = case / "out"
        cwd = os.getcwd()
        os.chdir(case)  # a mistake that became a path (`--output 1`) would show up here
        try:
            refused(capsys, [command, "--output-dir", str(out), *extra])
        finally:
            os.chdir(cwd)
        assert not out.exists() and os.listdir(case) == []
    check()
