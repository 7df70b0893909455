"""MMSegmentation glue: mmcv-lite compat, exact conversion, train/resume/eval/DDP via the tool."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (  # noqa: E402
    assert_read_once,
    assert_result,
    free_port,
    merged,
    read_counter,
    second_run_is_refused,
)
from PIL import Image

from mae_transfer import checkpoints, layouts
from mae_transfer import models as M
from mae_transfer.data.synthetic import make_ade_shapes

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/seg/tiny_cpu.py")
PY = sys.executable


@pytest.mark.slow
def test_mmseg_models_imports_on_mmcv_lite():
    code = "import mae_transfer.seg, mmseg.models; from mmseg.registry import MODELS; print(MODELS.get('MAEViT'))"
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MAEViT" in r.stdout


def test_mmengine_checkpoint_types_allowed_around_the_runner_only(tmp_path):
    """mmengine's own checkpoints (message hub: HistoryBuffer, numpy) load weights-only inside the block the
    seg runner and predictor run in; nothing stays allowed process-wide, yet the toolkit's reader takes a
    seg run's checkpoint in any process (a fresh `convert`, `evaluate`)."""
    from mmengine.logging import HistoryBuffer

    import mae_transfer.seg  # noqa: F401
    from mae_transfer.seg.compat import mmengine_checkpoint_types, mmengine_checkpoints

    if not mmengine_checkpoint_types():
        pytest.skip("this torch / mmengine needs no allowing")
    before, hub = set(torch.serialization.get_safe_globals()), HistoryBuffer()
    hub.update(1.5)
    with mmengine_checkpoints():
        torch.save({"hub": hub}, tmp_path / "ours.pth")  # saved without the class's statistics registry
        assert torch.load(tmp_path / "ours.pth", weights_only=True)["hub"].current() == 1.5
    assert set(torch.serialization.get_safe_globals()) == before  # torch keeps a set: no order
    with pytest.raises(Exception, match="HistoryBuffer"):
        torch.load(tmp_path / "ours.pth", weights_only=True)
    assert checkpoints.load_file(tmp_path / "ours.pth")["hub"].current() == 1.5
    torch.save({"hub": hub}, tmp_path / "stock.pth")  # outside the block: mmengine's pickling, with `getattr`
    with pytest.raises(checkpoints.CheckpointError, match="refused to unpickle 'getattr'"):
        checkpoints.load_file(tmp_path / "stock.pth")


def test_mmseg_mae_equals_our_encoder_after_conversion():
    from mmseg.registry import MODELS

    import mae_transfer.seg  # noqa: F401

    torch.manual_seed(0)
    mae = M.mae_vit_tiny_patch8(depth=4).eval()
    mm = MODELS.build(dict(type="MAE", img_size=(64, 64), patch_size=8, embed_dims=192, num_layers=4, num_heads=3,
                           init_values=1.0, out_indices=[1, 3], norm_cfg=dict(type="LN", eps=1e-6)))
    mm.init_weights()  # zero relative position bias
    mm.eval()  # (mmseg's MAE.train() returns None, so no chaining)
    missing = mm.load_state_dict(layouts.to_mmseg(mae.state_dict()), strict=False).missing_keys
    assert all("relative_position" in k for k in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = mm(x)
        latent, _, _ = mae.forward_encoder(x, 0.0, noise=torch.arange(64.0).expand(2, -1))  # nothing masked
        cls = (mae.cls_token + mae.pos_embed[:, :1]).expand(2, -1, -1)
        t = torch.cat([cls, mae.patch_embed(x) + mae.pos_embed[:, 1:]], 1)
        for i, blk in enumerate(mae.blocks):
            t = blk(t)
            if i == 1:
                ref1 = t[:, 1:].transpose(1, 2).reshape(2, 192, 8, 8)
    torch.testing.assert_close(feats[0], ref1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mae.norm(t), latent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[1], t[:, 1:].transpose(1, 2).reshape(2, 192, 8, 8), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return make_ade_shapes(tmp_path_factory.mktemp("ade"), n_train=8, n_val=3)["data_root"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    sd = M.mae_vit_tiny_patch8().state_dict()
    checkpoints.save_official(d / "full.pth", sd)
    checkpoints.save_official(d / "encoder.pth", {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask"))})
    return d


FAST = ["train_cfg.max_iters=2", "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=2",
        "train_dataloader.batch_size=2", "default_hooks.logger.interval=1"]


def _tool(*args, check=True, env=None):
    r = subprocess.run([PY, str(ROOT / "tools/train_seg.py"), *args], capture_output=True, text=True, timeout=900,
                       env=env)
    if check and r.returncode:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-3000:])
    return r


@pytest.mark.parametrize("name", ["full.pth", "encoder.pth"])
@pytest.mark.slow
def test_checkpoint_formats_load_with_no_trunk_key_missing(ckpts, name):
    from mmseg.registry import MODELS

    import mae_transfer.seg  # noqa: F401
    sd = checkpoints.read_state_dict(str(ckpts / name))
    bb = MODELS.build(dict(type="MAEViT", checkpoint=str(ckpts / name), img_size=(128, 128), patch_size=8,
                           embed_dims=192, num_layers=12, num_heads=3, init_values=1.0, out_indices=[3, 5, 7, 11]))
    bb.init_weights()
    assert torch.equal(bb.layers[7].ffn.layers[1].weight, sd["blocks.7.mlp.fc2.weight"])
    assert bb.pos_embed.shape[1] == 1 + 16 * 16  # 8x8 table resampled for 128-px crops


@pytest.mark.slow
def test_train_resume_eval_through_the_tool(tmp_path, ade, ckpts):
    wd = tmp_path / "run"
    r = _tool("--config", TINY, "--backbone", str(ckpts / "full.pth"), "--data-root", ade, "--output-dir", str(wd),
              *FAST)
    assert "loaded 172 tensors" in r.stdout + r.stderr
    assert (wd / "iter_2.pth").exists()
    r = _tool("--config", TINY, "--data-root", ade, "--output-dir", str(wd), "--resume", "--seed", "3", *FAST,
              check=False)  # another seed than the run's: one line
    assert r.returncode == 2 and "-> 3" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _tool("--config", TINY, "--data-root", ade, "--output-dir", str(wd), "--resume",
              *merged(FAST, ["train_cfg.max_iters=4", "train_cfg.val_interval=4"]))
    assert "resumed epoch: 0, iter: 2" in r.stdout + r.stderr
    res = json.loads((wd / "eval_results.json").read_text())
    assert {"mIoU", "mAcc", "aAcc"} <= set(res["summary"]) and set(res["per_class"]) == {"circle", "square", "triangle"}
    trained = assert_result(wd, "seg", ("mIoU", "mAcc", "aAcc"))
    assert trained["metrics"]["mIoU"] == res["summary"]["mIoU"]
    r = _tool("--config", TINY, "--data-root", ade, "--output-dir", str(wd), "--eval-only", str(wd / "iter_4.pth"),
              check=False)  # the training run's folder is its own: an evaluation goes elsewhere
    assert r.returncode == 2 and "writing there would replace what is read" in r.stderr
    ev = tmp_path / "ev"
    r = _tool("--config", TINY, "--data-root", ade, "--output-dir", str(ev), "--eval-only", str(wd / "iter_4.pth"))
    assert "mIoU" in r.stdout + r.stderr and (ev / "eval_results.json").exists()
    assert assert_result(ev, "seg", ("mIoU",))["metrics"]["mIoU"] == trained["metrics"]["mIoU"]
    imgs = Path(ade) / "images/validation"
    r = subprocess.run([PY, str(ROOT / "tools/predict.py"), "seg", str(imgs), "--config", TINY, "--weights",
                        str(wd / "iter_4.pth"), "--out", str(tmp_path / "pred"), "--batch-size", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in imgs.iterdir():
        cls = np.asarray(Image.open(tmp_path / "pred" / f"{f.stem}_classes.png"))
        assert cls.shape == np.asarray(Image.open(f)).shape[:2] and cls.max() < 3
        assert (tmp_path / "pred" / f"{f.stem}_overlay.png").stat().st_size > 1000
    assert json.loads((tmp_path / "pred/classes.json").read_text()) == ["circle", "square", "triangle"]


@pytest.mark.slow
def test_two_process_training(tmp_path, ade, ckpts):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                        str(ROOT / "tools/train_seg.py"), "--launcher", "pytorch", "--config", TINY,
                        "--backbone", str(ckpts / "encoder.pth"), "--data-root", ade, "--output-dir", str(tmp_path),
                        *FAST], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "iter_2.pth").exists()
    assert_result(tmp_path, "seg", ("mIoU",), world_size=2)


@pytest.mark.slow
def test_num_gpus_checks_once_in_the_launcher(tmp_path, ade, ckpts):
    """`--num-gpus 2`: the launcher checks every image and mask and peeks the backbone; each of the two processes
    it starts reads the backbone once and checks nothing again."""
    env, log = read_counter(tmp_path, ckpts / "encoder.pth", ade)
    r = subprocess.run([PY, "-m", "mae_transfer", "seg", "--num-gpus", "2", "--config", TINY, "--backbone",
                        str(ckpts / "encoder.pth"), "--data-root", ade, "--output-dir", str(tmp_path / "run"), *FAST],
                       capture_output=True, text=True, timeout=900, env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert_result(tmp_path / "run", "seg", ("mIoU",), world_size=2)
    assert_read_once(log, ckpts / "encoder.pth", ade, processes=2)


@pytest.mark.slow
def test_two_runs_on_one_output_dir(tmp_path, ade):
    cmd = [PY, "-m", "mae_transfer", "seg", "--config", TINY, "--data-root", ade, "--output-dir", str(tmp_path)]
    first = cmd + merged(FAST, ["train_cfg.val_interval=2"])
    res = second_run_is_refused(first, cmd + FAST + ["--seed", "1"], tmp_path)
    assert "mIoU" in res["metrics"]


@pytest.mark.slow
def test_bad_data_is_one_line(tmp_path, ade):
    import shutil
    root = tmp_path / "ade"
    shutil.copytree(ade, root)
    ann = sorted((root / "annotations/training").iterdir())
    Image.fromarray(np.full((128, 128), 9, dtype=np.uint8)).save(ann[0])  # label 9 with 3 classes
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "outside the 3 classes" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    Image.fromarray(np.zeros((64, 128), dtype=np.uint8)).save(ann[0])
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "mask is 128x64, its image 128x128" in r.stderr
    Image.fromarray(np.zeros((128, 128, 3), dtype=np.uint8)).save(ann[0])  # a colour mask
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "a RGB image (3 channels)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    img = root / "images/training" / (ann[0].stem + ".jpg")
    img.write_bytes(img.read_bytes()[:300])  # truncated (not empty): decoding it fails
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "1 train file(s) cannot be decoded" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
    ann[1].unlink()
    ann[0].unlink()
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "2 mask(s) missing" in r.stderr


def _voc_and_plain(ade: Path, root: Path):
    """The generated scenes in VOC's layout (JPEGImages/, palette SegmentationClass/ with 0 =
    background as a class, shapes as VOC classes 1..3, a 255 void band around each shape,
    ImageSets/Segmentation/{train,val}.txt) and as a plain 2-class images/ + masks/ set."""
    import mae_transfer.seg  # noqa: F401  (mmcv-lite compat: before mmseg.datasets)

    # isort: split
    from mmseg.datasets import PascalVOCDataset
    from PIL import ImageFilter
    palette = [c for rgb in PascalVOCDataset.METAINFO["palette"] for c in rgb]
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / "voc" / sub).mkdir(parents=True)
    for split, voc_split in (("training", "train"), ("validation", "val")):
        stems = []
        for img in sorted((ade / "images" / split).iterdir()):
            lab = np.asarray(Image.open(ade / "annotations" / split / (img.stem + ".png")))
            edge = np.asarray(Image.fromarray(lab).filter(ImageFilter.FIND_EDGES)) > 0
            voc = Image.fromarray(np.where(edge, 255, lab).astype(np.uint8), "P")
            voc.putpalette(palette + [224, 224, 192] * (256 - len(palette) // 3))
            voc.save(root / "voc/SegmentationClass" / (img.stem + ".png"))
            (root / "voc/JPEGImages" / img.name).write_bytes(img.read_bytes())
            stems.append(img.stem)
            for sub in ("images", "masks"):
                (root / "plain" / voc_split / sub).mkdir(parents=True, exist_ok=True)
            (root / "plain" / voc_split / "images" / img.name).write_bytes(img.read_bytes())
            Image.fromarray((lab > 0).astype(np.uint8)).save(root / "plain" / voc_split / "masks" / (img.stem + ".png"))
        (root / "voc/ImageSets/Segmentation" / f"{voc_split}.txt").write_text("\n".join(stems) + "\n")
    (root / "plain/classes.txt").write_text("background\nshape\n")


@pytest.mark.slow
def test_voc_layout_and_plain_two_class_set_by_path(tmp_path, ade, ckpts):
    _voc_and_plain(Path(ade), tmp_path)
    assert Image.open(next((tmp_path / "voc/SegmentationClass").iterdir())).mode == "P"
    wd = tmp_path / "voc_run"
    _tool("--config", TINY, "--backbone", str(ckpts / "encoder.pth"), "--data-root", str(tmp_path / "voc"),
          "--output-dir", str(wd), *FAST)
    res = json.loads((wd / "eval_results.json").read_text())
    assert len(res["per_class"]) == 21 and list(res["per_class"])[:2] == ["background", "aeroplane"]
    assert res["per_class"]["background"]["IoU"] is not None and res["per_class"]["cat"]["IoU"] is None  # absent
    p, wd = tmp_path / "plain", tmp_path / "plain_run"
    _tool("--config", TINY, "--backbone", str(ckpts / "encoder.pth"), "--classes", str(p / "classes.txt"),
          "--train-images", str(p / "train/images"), "--train-masks", str(p / "train/masks"),
          "--val-images", str(p / "val/images"), "--val-masks", str(p / "val/masks"), "--output-dir", str(wd),
          *FAST)
    res = json.loads((wd / "eval_results.json").read_text())
    assert list(res["per_class"]) == ["background", "shape"] and "mIoU" in res["summary"]
    r = _tool("--config", TINY, "--classes", str(p / "classes.txt"), "--train-images", str(p / "train/images"),
              "--train-masks", str(p / "train/masks"), check=False)
    assert r.returncode == 2 and "go together" in r.stderr
