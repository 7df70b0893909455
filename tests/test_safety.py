"""Checkpoints are untrusted input: a malicious file (zip or legacy torch pickle, a raw pickle) given to any
option of any command that takes weights is one `error:` line, and nothing in it runs. Damaged, empty
and non-dict files are one line too."""
import os
import pickle
import re

import pytest
import torch

from mae_transfer.cli import main


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    marker = d / "EXECUTED"
    obj = {"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}
    torch.save(obj, d / "zip.pth")
    torch.save(obj, d / "legacy.pth", _use_new_zipfile_serialization=False)
    with open(d / "raw.pth", "wb") as f:
        pickle.dump(obj, f)
    (d / "empty.pth").write_bytes(b"")
    torch.save(torch.zeros(3), d / "tensor.pth")
    torch.save([1, 2], d / "list.pth")
    (d / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (d / "huge.safetensors").write_bytes((10**15).to_bytes(8, "little") + b"{}")
    (d / "img").mkdir()
    from PIL import Image
    Image.new("RGB", (64, 64), "red").save(d / "img" / "a.png")
    return d, marker


def _commands(ckpt, d):
    o = ["--output-dir", str(d / "out")]
    cmds = [["pretrain", "--eval-only", ckpt, *o], ["finetune", "--backbone", ckpt, *o],
            ["finetune", "--eval-only", ckpt, *o], ["linprobe", "--backbone", ckpt, *o],
            ["convert", ckpt, "--to", "hf", str(d / "hf")],
            ["visualize", "--checkpoint", ckpt, "--images", str(d / "img")],
            ["evaluate", ckpt, "random", "--output-dir", str(d / "ev")]]
    try:
        import detectron2  # noqa: F401
        cmds += [["det", "--config", "tiny_cpu", "--backbone", ckpt, *o], ["det", "--config", "tiny_cpu", "--eval-only",
                 ckpt, *o], ["predict", "det", str(d / "img"), "--config", "tiny_cpu", "--weights", ckpt]]
    except ImportError:
        pass
    try:
        import mmseg  # noqa: F401
        cmds += [["seg", "--config", "tiny_cpu", "--backbone", ckpt, *o], ["seg", "--config", "tiny_cpu", "--eval-only",
                 ckpt, *o], ["predict", "seg", str(d / "img"), "--config", "tiny_cpu", "--weights", ckpt]]
    except ImportError:
        pass
    return cmds


@pytest.mark.parametrize("name,says", [("zip.pth", "refused to unpickle 'posix.system'"),
                                       ("legacy.pth", "refused to unpickle 'posix.system'"),
                                       ("raw.pth", "a plain pickle"), ("empty.pth", "empty file"),
                                       ("tensor.pth", "holds a Tensor"), ("list.pth", "holds a list"),
                                       ("bad.safetensors", "not a readable .safetensors"),
                                       ("huge.safetensors", "not a readable .safetensors")])
@pytest.mark.slow
def test_every_weight_option_refuses_in_one_line(capsys, bad_files, name, says):
    d, marker = bad_files
    for argv in _commands(str(d / name), d):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), (argv, err)
        if name in ("zip.pth", "legacy.pth", "raw.pth", "empty.pth") or "safetensors" in name:
            assert says in err[0], (argv, err)
        assert not marker.exists(), argv
        assert not list((d / "out").rglob("result.json")) and not (d / "hf").exists()


def test_a_diverged_checkpoint_is_refused(capsys, tmp_path):
    from mae_transfer import checkpoints
    from mae_transfer import models as M

    sd = M.mae_vit_tiny_patch8(img_size=32, depth=2).state_dict()
    sd["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    checkpoints.save(tmp_path / "nan.pth", {"model": sd})
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "nan.pth"), "--to", "official", str(tmp_path / "o.pth")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or Inf" in err[0] and not (tmp_path / "o.pth").exists()


def test_data_mistakes_are_one_line(tmp_path):
    import json

    from mae_transfer.data import DataError
    from mae_transfer.data.synthetic import make_coco_shapes
    from mae_transfer.reading import read_classes

    (tmp_path / "classes.txt").write_text("background\ncat\ndog\ncat\n")
    with pytest.raises(DataError, match="'cat' more than once"):
        read_classes(tmp_path / "classes.txt")
    pytest.importorskip("detectron2")
    from mae_transfer.det.data import check_coco_json

    coco = make_coco_shapes(tmp_path / "coco", n_train=3, n_val=1)
    js = json.loads(open(coco["train_json"]).read())
    cases = {"annotations[0].bbox: width and height must be > 0 (got -4.0": lambda j: j["annotations"][0]["bbox"]
             .__setitem__(2, -4),
             "annotations[0].image_id: 999 is not the id of an image": lambda j: j["annotations"][0]
             .__setitem__("image_id", 999),
             "annotations[0].bbox: Input should be a valid list": lambda j: j["annotations"][0]
             .__setitem__("bbox", "10 10 5 5")}
    for says, spoil in cases.items():
        bad = json.loads(json.dumps(js))
        spoil(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=re.escape(says)):
            check_coco_json(tmp_path / "bad.json", coco["train_images"])
    first = tmp_path / "coco" / "train" / js["images"][0]["file_name"]
    data = first.read_bytes()
    for spoilt, says in [(b"", "0 bytes"), (b"not an image" * 50, "cannot identify image file"),
                         (data[: len(data) // 2], "truncated")]:
        first.write_bytes(spoilt)
        with pytest.raises(DataError, match=f"1 image\\(s\\) under .* cannot be decoded, e.g. .*{says}"):
            check_coco_json(coco["train_json"], coco["train_images"])


def test_stale_temporary_files_are_removed_on_the_next_start(tmp_path):
    from mae_transfer import outputs

    (tmp_path / ".checkpoint-last.pth.x1y2.tmp").write_bytes(b"")
    with outputs.claim(tmp_path, resume=True):
        assert not list(tmp_path.glob(".*.tmp"))


def test_unwritable_output_paths_are_one_line(capsys, tmp_path):
    from mae_transfer import checkpoints

    shadow = tmp_path / "taken"
    shadow.write_text("a file where the output folder should be")
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--output-dir", str(shadow), "epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "is a file, not a folder" in err[0]
    with pytest.raises(checkpoints.CheckpointError, match="cannot write"):
        checkpoints.save(shadow / "checkpoint-last.pth", {"model": {"w": torch.zeros(1)}})
    assert shadow.read_text().startswith("a file")  # nothing of it was changed


def test_train_and_val_categories_must_agree(tmp_path):
    import argparse
    import json

    pytest.importorskip("detectron2")
    from mae_transfer.data import DataError
    from mae_transfer.data.synthetic import make_coco_shapes
    from mae_transfer.det.train import data_facts

    coco = make_coco_shapes(tmp_path / "coco", n_train=2, n_val=1)
    js = json.loads(open(coco["val_json"]).read())
    js["categories"][0]["name"] = "not-the-same"
    (tmp_path / "v.json").write_text(json.dumps(js))
    a = argparse.Namespace(train_json=coco["train_json"], train_images=coco["train_images"],
                           val_json=str(tmp_path / "v.json"), val_images=coco["val_images"], eval_only="")
    with pytest.raises(DataError, match="different categories"):
        data_facts(a, None)
    a.val_json = coco["val_json"]
    assert data_facts(a, None)["val"]["classes"] == len(js["categories"])
