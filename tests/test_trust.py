"""One test per root of the trust issue, through the commands as users type them: a .pt2 whose constants
config hides a pickle (nothing runs), convert onto its own input, a symlink in the output folder, a refused run
then the corrected command, EXIF-rotated photos (upright everywhere, masks and boxes aligned), a head that does
not fit its config, an unexpected exception (an `internal error:` line and a log)."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import refused
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mae_transfer import checkpoints, outputs
from mae_transfer.cli import command

PY = sys.executable


# --------------------------------------------------------------------------------------------- .pt2
class _Touch:
    """A pickle that creates a file when unpickled: the stand-in for code an attacker would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _hide_pickle(src: Path, dst: Path, marker: Path) -> None:
    """Copy a .pt2, adding a constant whose path name starts with opaque_obj_ one folder deeper than a
    member-name check looks, and list it in the constants config (what torch.export.load follows)."""
    payload = pickle.dumps(_Touch(marker))
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        root = names[0].split("/")[0]
        conf = next(n for n in names if n.endswith("_constants_config.json"))
        config = json.loads(z.read(conf))
        config["config"]["evil"] = {"path_name": "opaque_obj_0/x", "is_param": False, "use_pickle": True,
                                    "tensor_meta": None}
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
            for n in names:
                out.writestr(n, json.dumps(config) if n == conf else z.read(n))
            out.writestr(f"{root}/data/constants/opaque_obj_0/x", payload)


def test_a_pt2_hiding_a_pickle_in_its_constants_config_runs_nothing(encoder_export, tmp_path, capsys):
    from mae_transfer.export import folder, load_runtime

    marker = tmp_path / "ran"
    shared = tmp_path / "shared"
    shutil.copytree(encoder_export, shared)
    _hide_pickle(encoder_export / "model.pt2", shared / "model.pt2", marker)
    # the attack is real: torch's own loader, unguarded, runs it
    try:
        torch.export.load(str(shared / "model.pt2"))
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()
    # the sharer records the file's hash, as their own export would
    meta = json.loads((shared / "export.json").read_text())
    meta["sha256"] = folder.hashes(shared)
    (shared / "export.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoints.CheckpointError, match="opaque_obj_0/x"):
        load_runtime(shared / "model.pt2")
    line = refused(capsys, ["export", "encoder", "--output-dir", str(shared), "--check-only", "--to", "pt2",
                            "--max-images", "1"])
    assert "tensors-only" in line and not marker.exists()
    # the same archive listed as a segmenter's graph: predict --runtime torch-export refuses it, nothing runs
    (shared / "config.json").write_text("{}\n")
    meta.update(kind="seg", config="config.json", sha256=folder.hashes(shared))
    (shared / "export.json").write_text(json.dumps(meta))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    line = refused(capsys, ["predict", "seg", str(tmp_path / "a.png"), "--runtime", "torch-export", "--weights",
                            str(shared), "--output-dir", str(tmp_path / "p")])
    assert "opaque_obj_0/x" in line and not marker.exists()


def test_an_export_folders_config_that_would_run_code_is_refused(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.config import LazyConfig

    from mae_transfer.engine.config import resolve_config
    from mae_transfer.export.folder import check_config, snapshot_config

    good = snapshot_config("det", str(resolve_config("tiny_cpu", "det")), tmp_path)
    check_config(good)  # what the toolkit writes passes (partial, tuples, ShapeSpec of detectron2)
    text, marker = good.read_text(), tmp_path / "ran"
    for evil in (f"pwn: !!python/object/apply:os.makedirs ['{marker}']\n" + text,
                 text.replace("torch.optim.AdamW", "os.system"),
                 text.replace("!!python/name:torch.nn.modules.normalization.LayerNorm", "!!python/name:os.system")):
        (tmp_path / "evil.yaml").write_text(evil)
        with pytest.raises(checkpoints.CheckpointError, match="is not something this toolkit's configs build"):
            check_config(tmp_path / "evil.yaml")
    (tmp_path / "evil.yaml").write_text(f"pwn: !!python/object/apply:os.makedirs ['{marker}']\n" + text)
    LazyConfig.load(str(tmp_path / "evil.yaml"))  # the attack is real: detectron2's own loader runs it
    assert marker.exists()


def test_a_pickled_constant_marked_as_a_tensor_is_refused(encoder_export, tmp_path):
    from mae_transfer.export import check_pt2

    src, dst = encoder_export / "model.pt2", tmp_path / "m.pt2"
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for n in z.namelist():
            data = z.read(n)
            if n.endswith("_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True  # torch.load(weights_only=False) on it
                data = json.dumps(cfg).encode()
            out.writestr(n, data)
    with pytest.raises(checkpoints.CheckpointError, match="use_pickle"):
        check_pt2(dst)


def test_an_export_folder_travels_alone_and_checks_every_file(encoder_export, tmp_path, capsys):
    meta = json.loads((encoder_export / "export.json").read_text())
    assert meta["weights"] == "weights.pth" and set(meta["sha256"]) >= {"weights.pth", "model.onnx", "model.pt2"}
    moved = tmp_path / "moved"
    shutil.copytree(encoder_export, moved)
    (encoder_export.parent / "mae.pth").rename(encoder_export.parent / "gone.pth")  # the original weights: gone
    try:
        report = command("export")(["encoder", "--output-dir", str(moved), "--check-only", "--max-images", "1"])
        assert report["parity"]
        w = bytearray((moved / "weights.pth").read_bytes())
        w[-20] ^= 0xFF
        (moved / "weights.pth").write_bytes(bytes(w))
        assert "no SHA-256 match" in refused(capsys, ["export", "encoder", "--output-dir", str(moved),
                                                      "--check-only", "--max-images", "1"])
    finally:
        (encoder_export.parent / "gone.pth").rename(encoder_export.parent / "mae.pth")


def test_a_second_export_into_one_folder_is_refused(encoder_export, capsys):
    line = refused(capsys, ["export", "encoder", "--weights", str(encoder_export.parent / "mae.pth"),
                            "--output-dir", str(encoder_export), "--max-images", "1"])
    assert "already holds a run (export.json)" in line


# --------------------------------------------------------------------------------------- outputs
def test_convert_onto_its_own_input_keeps_the_input(tmp_path, capsys, tiny_mae):
    src = tmp_path / "X.pth"
    checkpoints.save_official(src, tiny_mae().state_dict(), epoch=3)
    before = src.read_bytes()
    for target, out in (("timm", src), ("hf", tmp_path), ("official", tmp_path / "." / "X.pth")):
        assert "writing there would replace what is read" in refused(capsys, ["convert", str(src), "--to", target,
                                                                              str(out)])
        assert src.read_bytes() == before
    os.symlink(src, tmp_path / "link.pth")
    refused(capsys, ["convert", str(src), "--to", "timm", str(tmp_path / "link.pth")])
    assert src.read_bytes() == before


def test_a_run_never_writes_where_it_reads(tmp_path, capsys):
    from mae_transfer.data.synthetic import make_coco_shapes

    coco = make_coco_shapes(tmp_path / "coco", n_train=2, n_val=1)
    val = Path(coco["val_json"])
    inside = tmp_path / "od"
    inside.mkdir()
    shutil.copy(val, inside / "eval_results.json")  # the val set sits where det would write its metrics
    before = (inside / "eval_results.json").read_bytes()
    torch.save({"model": {"roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 8),
                          "backbone.net.pos_embed": torch.zeros(1, 5, 8)}}, tmp_path / "det.pth")
    line = refused(capsys, ["det", "--config", "tiny_cpu", "--eval-only", str(tmp_path / "det.pth"), "--val-json",
                            str(inside / "eval_results.json"), "--val-images", coco["val_images"],
                            "--output-dir", str(inside)])
    assert "writing there would replace what is read" in line and (inside / "eval_results.json").read_bytes() == before
    assert sorted(p.name for p in inside.iterdir()) == ["eval_results.json"]
    imgs = Path(coco["train_images"])
    for out in (imgs / "out", imgs.parent):  # inside the data, or holding it
        assert "writing there would replace" in refused(capsys, ["pretrain", "--data-path", str(imgs),
                                                                 "--output-dir", str(out), "epochs=1"])
        assert not (imgs / "out").exists()


def test_a_refusal_puts_back_what_the_host_changed_and_the_folders_it_made(tmp_path):
    from mae_transfer.errors import DataError

    run = tmp_path / "mine"
    run.mkdir()
    (run / "log.txt").write_text("my own notes\n")
    with pytest.raises(DataError):
        with outputs.claim(run):
            (run / "log.txt").write_text("a host appended\n" * 100)  # detectron2's logger, before the refusal
            (run / "config.yaml").write_text("x: 1\n")
            raise DataError("refused")
    assert sorted(p.name for p in run.iterdir()) == ["log.txt"]  # the lock it made is gone too
    assert (run / "log.txt").read_text() == "my own notes\n"
    deep = tmp_path / "new1/new2/new3"
    with pytest.raises(DataError):
        with outputs.claim(deep):
            raise DataError("refused")
    assert not (tmp_path / "new1").exists()


def test_a_symlink_in_the_output_folder_is_refused_and_its_target_kept(tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(target, out / "log.txt")
    line = refused(capsys, ["pretrain", "--output-dir", str(out), "epochs=1"])
    assert "log.txt is a symbolic link" in line and target.read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["log.txt"]  # nothing left behind either
    outputs.write_text(out / "log.txt", "new")  # the toolkit's own writer replaces a link, never follows it
    assert target.read_text() == "keep me" and not (out / "log.txt").is_symlink()


@given(paths=st.lists(st.lists(st.sampled_from(["a", "b", "x", "x.jpg", "x.png", "y.jpg"]), min_size=1, max_size=3),
                      min_size=1, max_size=8, unique_by=tuple))
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_two_inputs_never_share_an_output_name(paths):
    files = [Path("/data", *p) for p in paths]
    names = outputs.unique_names(files)
    assert len(set(names)) == len(files) and all("/" not in n for n in names)


def test_an_unexpected_exception_is_an_internal_error_line_with_a_log(tmp_path, monkeypatch, capsys):

    def broken(argv, prog):
        raise TypeError("unsupported operand")
    from mae_transfer.cli import visualize

    monkeypatch.setattr(visualize, "main", broken)
    monkeypatch.setenv("MAE_TRANSFER_LOG_DIR", str(tmp_path))
    line = refused(capsys, ["visualize", "--checkpoint", "x"], code=1)
    assert line.startswith("internal error: TypeError: unsupported operand") and "traceback: " in line
    log = Path(line.rsplit("traceback: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path and "in broken" in log.read_text()


def test_evaluate_runs_a_row_again_when_its_checkpoint_changed(tmp_path, tiny_mae):
    from mae_transfer import evaluate, results
    from mae_transfer.suites import Run

    ckpt, d = tmp_path / "mae.pth", tmp_path / "runs/mae/linprobe/seed0"
    checkpoints.save_official(ckpt, tiny_mae().state_dict())
    with results.recorded("linprobe", d, seed=0, checkpoint=ckpt) as rec:
        rec.metrics["top-1"] = 50.0
    run = Run("mae", "linprobe", 0, d, ("top-1",), ["mae-transfer", "linprobe"], str(ckpt))
    assert evaluate.done(run) and not evaluate.stale(run)
    checkpoints.save_official(ckpt, tiny_mae(depth=1).state_dict())  # another model under the same name
    assert evaluate.stale(run)
    evaluate.retire(run)
    assert not d.exists() and not evaluate.done(run) and len(list(d.parent.glob("seed0.replaced-*"))) == 1
    d.mkdir()  # a refused run: no result.json, its error line in run.log is what the report shows
    (d / "run.log").write_text("mae-transfer linprobe ...\nerror: no images found under /x\n")
    assert evaluate.finished([run])[0]["error"] == "error: no images found under /x"


# ---------------------------------------------------------------------------------------------- EXIF
def _exif_rotated(upright: Image.Image, path: Path) -> None:
    """Store `upright` as a phone does: the pixels turned 90 degrees, EXIF orientation 6 to turn them back."""
    raw = upright.transpose(Image.Transpose.ROTATE_90)
    exif = raw.getexif()
    exif[0x0112] = 6
    raw.save(path, quality=95, exif=exif.tobytes())


def _upright_scene(w: int = 96, h: int = 64):
    """A landscape picture with a red block top-left, and its mask (1 on the block)."""
    img = np.full((h, w, 3), 200, np.uint8)
    img[4:28, 4:40] = (255, 0, 0)
    mask = np.zeros((h, w), np.uint8)
    mask[4:28, 4:40] = 1
    return Image.fromarray(img), mask


def test_one_reader_turns_photos_upright_and_the_hosts_agree(tmp_path):
    from mae_transfer.data.images import load_rgb, probe

    up, _ = _upright_scene()
    _exif_rotated(up, tmp_path / "phone.jpg")
    with Image.open(tmp_path / "phone.jpg") as raw:
        assert raw.size == (64, 96)
    ours = np.asarray(load_rgb(tmp_path / "phone.jpg")).astype(int)
    assert ours.shape == (64, 96, 3) and np.abs(ours - np.asarray(up)).mean() < 4
    assert probe(tmp_path / "phone.jpg") == ((96, 64), None)
    pytest.importorskip("detectron2")
    from detectron2.data.detection_utils import read_image

    assert np.abs(read_image(str(tmp_path / "phone.jpg"), format="RGB").astype(int) - ours).mean() < 2


def test_seg_masks_align_with_exif_rotated_photos_or_are_refused(tmp_path, capsys):
    pytest.importorskip("mmseg")
    import mae_transfer.seg  # noqa: F401  (mmseg on mmcv-lite)

    # isort: split
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets.transforms import LoadAnnotations

    from mae_transfer.data.synthetic import make_ade_shapes

    up, mask = _upright_scene()
    root = Path(make_ade_shapes(tmp_path / "ade", n_train=2, n_val=1)["data_root"])
    img_path, mask_path = root / "images/training/phone.jpg", root / "annotations/training/phone.png"
    _exif_rotated(up, img_path)
    Image.fromarray(mask + 1).save(mask_path)  # ADE20K's masks: 0 is "other"
    r = LoadImageFromFile()({"img_path": str(img_path)})
    r.update(seg_map_path=str(mask_path), reduce_zero_label=True, seg_fields=[])
    r = LoadAnnotations()(r)
    green = r["img"][..., 1].astype(int)  # BGR: the red block has none, the grey rest 200
    assert r["img"].shape[:2] == r["gt_seg_map"].shape == (64, 96)
    assert green[r["gt_seg_map"] == 1].mean() < 20 and green[r["gt_seg_map"] == 0].mean() > 180  # aligned
    # a mask drawn on the raw (sideways) pixels would be trained against the photo turned 90 degrees: refused
    Image.fromarray(np.rot90(mask + 1)).save(mask_path)
    line = refused(capsys, ["seg", "--config", "tiny_cpu", "--data-root", str(root), "--output-dir",
                            str(tmp_path / "out")])
    assert "upright (EXIF orientation applied)" in line and not (tmp_path / "out").exists()


def test_det_sizes_are_checked_upright(tmp_path, capsys):
    pytest.importorskip("detectron2")
    from detectron2.data.detection_utils import check_image_size, read_image

    from mae_transfer.data.synthetic import make_coco_shapes
    from mae_transfer.det.data import check_coco_json

    coco = make_coco_shapes(tmp_path / "coco", n_train=2, n_val=1)
    up, _ = _upright_scene()
    _exif_rotated(up, Path(coco["train_images"]) / "phone.jpg")
    js = json.loads(Path(coco["train_json"]).read_text())
    entry = {"id": 999, "file_name": "phone.jpg", "width": 96, "height": 64}
    js["images"].append(entry)
    js["annotations"].append({"id": 999, "image_id": 999, "category_id": js["categories"][0]["id"],
                              "bbox": [4, 4, 36, 24], "area": 864, "iscrowd": 0})
    for a in js["annotations"]:
        a.pop("segmentation", None)
    Path(coco["train_json"]).write_text(json.dumps(js))
    check_coco_json(coco["train_json"], coco["train_images"])  # upright size: accepted
    image = read_image(str(Path(coco["train_images"]) / "phone.jpg"), format="BGR")
    check_image_size(entry, image)  # detectron2's own check agrees: the box is on the upright picture
    assert image[4:28, 4:40, 2].mean() > 240
    entry.update(width=64, height=96)  # the raw (sideways) size
    Path(coco["train_json"]).write_text(json.dumps(js))
    line = refused(capsys, ["det", "--config", "tiny_cpu", "--train-json", coco["train_json"], "--train-images",
                            coco["train_images"], "--val-json", coco["val_json"], "--val-images", coco["val_images"],
                            "--output-dir", str(tmp_path / "out")])
    assert "is 96x64 upright" in line and "says 64x96" in line


# ------------------------------------------------------------------- trained models (the slow tier)
def _run(*argv):
    r = subprocess.run([PY, "-m", "mae_transfer", *argv], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_refused_run_then_the_corrected_command_starts(tmp_path):
    out, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    tiny = ["--config", "demo_tiny", "--output-dir", str(out), "epochs=1", "demo_samples=16", "batch_size=8",
            "effective_batch_size=8", "warmup_epochs=0", "img_size=32", "vis_freq=100", "num_workers=1"]
    r = subprocess.run([PY, "-m", "mae_transfer", "pretrain", *tiny, "--data-path", str(empty)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no images"), r.stderr[-2000:]
    assert not out.exists()  # nothing left behind to refuse the corrected command
    _run("pretrain", *tiny)
    assert json.loads((out / "result.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_exif_photos_through_training_and_both_predictors_and_heads_that_do_not_fit(tmp_path, capsys):
    from mae_transfer.data.synthetic import make_ade_shapes, make_coco_shapes

    up, mask = _upright_scene()
    # segmentation: an EXIF-rotated photo with its upright mask trains
    ade = Path(make_ade_shapes(tmp_path / "ade", n_train=3, n_val=1)["data_root"])
    _exif_rotated(up, ade / "images/training/phone.jpg")
    Image.fromarray(mask + 1).save(ade / "annotations/training/phone.png")
    seg = tmp_path / "seg"
    _run("seg", "--config", "tiny_cpu", "--data-root", str(ade), "--output-dir", str(seg), "train_cfg.max_iters=2",
         "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=2", "train_dataloader.batch_size=2")
    # detection: an EXIF-rotated photo whose json gives the upright size trains
    coco = make_coco_shapes(tmp_path / "coco", n_train=3, n_val=1)
    _exif_rotated(up, Path(coco["train_images"]) / "phone.jpg")
    js = json.loads(Path(coco["train_json"]).read_text())
    js["images"].append({"id": 999, "file_name": "phone.jpg", "width": 96, "height": 64})
    js["annotations"].append({"id": 999, "image_id": 999, "category_id": js["categories"][0]["id"], "iscrowd": 0,
                              "bbox": [4, 4, 36, 24], "area": 864, "segmentation": [[4, 4, 40, 4, 40, 28, 4, 28]]})
    Path(coco["train_json"]).write_text(json.dumps(js))
    det = tmp_path / "det"
    _run("det", "--config", "tiny_cpu", "--output-dir", str(det), "--train-json", coco["train_json"],
         "--train-images", coco["train_images"], "--val-json", coco["val_json"], "--val-images", coco["val_images"],
         "train.max_iter=2", "dataloader.train.total_batch_size=2")
    # both predictors see the photo upright
    photos = tmp_path / "photos"
    photos.mkdir()
    _exif_rotated(up, photos / "phone.jpg")
    command("predict")(["seg", str(photos), "--config", "tiny_cpu", "--weights", str(seg / "iter_2.pth"),
                        "--output-dir", str(tmp_path / "ps")])
    assert np.asarray(Image.open(tmp_path / "ps/phone_classes.png")).shape == (64, 96)
    assert Image.open(tmp_path / "ps/phone_overlay.png").size == (96, 64)
    command("predict")(["det", str(photos), "--config", "tiny_cpu", "--weights", str(det / "model_final.pth"),
                        "--output-dir", str(tmp_path / "pd"), "--min-draw", "1"])
    assert Image.open(tmp_path / "pd/phone_overlay.png").size == (96, 64)
    # a config whose head does not fit the weights: one line, not a model with random parts
    line = refused(capsys, ["predict", "det", str(photos), "--config", "mask_rcnn_vitdet_b_100ep", "--weights",
                            str(det / "model_final.pth"), "--output-dir", str(tmp_path / "x1")])
    assert "do not fit the model" in line or "lacks" in line, line
    line = refused(capsys, ["predict", "seg", str(photos), "--config", "mae_vit_base_upernet_160k_ade20k",
                            "--weights", str(seg / "iter_2.pth"), "--output-dir", str(tmp_path / "x2")])
    assert "do not fit the model" in line or "lacks" in line, line
    # the wrong kind of file: said in one line, with the command that makes the right one
    line = refused(capsys, ["predict", "det", str(photos), "--config", "tiny_cpu", "--weights",
                            str(seg / "iter_2.pth"), "--output-dir", str(tmp_path / "x3")])
    assert "a trained segmenter (made by mae-transfer seg)" in line and "mae-transfer det" in line
