"""MMSegmentation glue: mmcv-lite compat, exact conversion, train/resume/eval/DDP via the tool."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port  # noqa: E402
from PIL import Image

from mae_transfer import checkpoints
from mae_transfer import models as M
from mae_transfer.data.synthetic import make_ade_shapes

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/seg/tiny_cpu.py")
PY = sys.executable


@pytest.mark.cli
def test_mmseg_models_imports_on_mmcv_lite():
    code = "import mae_transfer.seg, mmseg.models; from mmseg.registry import MODELS; print(MODELS.get('MAEViT'))"
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MAEViT" in r.stdout


def test_mmseg_mae_equals_our_encoder_after_conversion():
    from mmseg.registry import MODELS

    import mae_transfer.seg  # noqa: F401

    torch.manual_seed(0)
    mae = M.mae_vit_tiny_patch8(depth=4).eval()
    mm = MODELS.build(dict(type="MAE", img_size=(64, 64), patch_size=8, embed_dims=192, num_layers=4, num_heads=3,
                           init_values=1.0, out_indices=[1, 3], norm_cfg=dict(type="LN", eps=1e-6)))
    mm.init_weights()  # zero relative position bias
    mm.eval()  # (mmseg's MAE.train() returns None, so no chaining)
    missing = mm.load_state_dict(checkpoints.to_mmseg(mae.state_dict()), strict=False).missing_keys
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
def test_checkpoint_formats_load_with_no_trunk_key_missing(ckpts, name):
    from mmseg.registry import MODELS

    import mae_transfer.seg  # noqa: F401
    sd = checkpoints.read_state_dict(str(ckpts / name))
    bb = MODELS.build(dict(type="MAEViT", checkpoint=str(ckpts / name), img_size=(128, 128), patch_size=8,
                           embed_dims=192, num_layers=12, num_heads=3, init_values=1.0, out_indices=[3, 5, 7, 11]))
    bb.init_weights()
    assert torch.equal(bb.layers[7].ffn.layers[1].weight, sd["blocks.7.mlp.fc2.weight"])
    assert bb.pos_embed.shape[1] == 1 + 16 * 16  # 8x8 table resampled for 128-px crops


@pytest.mark.cli
def test_train_resume_eval_through_the_tool(tmp_path, ade, ckpts):
    wd = tmp_path / "run"
    r = _tool("--config", TINY, "--backbone", str(ckpts / "full.pth"), "--data-root", ade, "--work-dir", str(wd),
              "--cfg-options", *FAST)
    assert "loaded 172 tensors" in r.stdout + r.stderr
    assert (wd / "iter_2.pth").exists()
    r = _tool("--config", TINY, "--data-root", ade, "--work-dir", str(wd), "--resume",
              "--cfg-options", *FAST, "train_cfg.max_iters=4", "train_cfg.val_interval=4")
    assert "resumed epoch: 0, iter: 2" in r.stdout + r.stderr
    res = json.loads((wd / "eval_results.json").read_text())
    assert {"mIoU", "mAcc", "aAcc"} <= set(res["summary"]) and set(res["per_class"]) == {"circle", "square", "triangle"}
    (wd / "eval_results.json").unlink()
    r = _tool("--config", TINY, "--data-root", ade, "--work-dir", str(wd), "--eval-only", str(wd / "iter_4.pth"))
    assert "mIoU" in r.stdout + r.stderr and (wd / "eval_results.json").exists()


@pytest.mark.cli
def test_two_process_training(tmp_path, ade, ckpts):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                        str(ROOT / "tools/train_seg.py"), "--launcher", "pytorch", "--config", TINY,
                        "--backbone", str(ckpts / "encoder.pth"), "--data-root", ade, "--work-dir", str(tmp_path),
                        "--cfg-options", *FAST], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "iter_2.pth").exists()


@pytest.mark.cli
def test_bad_data_is_one_line(tmp_path, ade):
    import shutil
    root = tmp_path / "ade"
    shutil.copytree(ade, root)
    ann = sorted((root / "annotations/training").iterdir())
    Image.fromarray(np.full((16, 16), 9, dtype=np.uint8)).save(ann[0])  # label 9 with 3 classes
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "outside the 3 classes" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    ann[1].unlink()
    ann[0].unlink()
    r = _tool("--config", TINY, "--data-root", str(root), check=False)
    assert r.returncode == 2 and "annotation missing" in r.stderr
