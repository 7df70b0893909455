"""tools/convert.py: every target is loaded by the target library's own loader, round trips are exact."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_transfer import checkpoints
from mae_transfer import models as M
from mae_transfer.convert import convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KW = dict(img_size=64, depth=2)  # ViT-Ti/8 at 64 px with 2 blocks: the demo model, shortened


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A pretraining-style checkpoint (args and model_args included) of a tiny MAE with random weights."""
    d = tmp_path_factory.mktemp("conv")
    torch.manual_seed(0)
    mae = M.create_mae("mae_vit_tiny_patch8", **KW, norm_pix_loss=True)
    for p in mae.parameters():  # LayerNorms away from ones/zeros, so a skipped tensor would show
        p.data.add_(0.01 * torch.randn_like(p))
    checkpoints.save(d / "ck.pth", {"model": mae.state_dict(), "args": {"img_size": 64, "norm_pix_loss": True},
                                    "model_args": mae.model_args})
    return d / "ck.pth", mae.eval()


@pytest.mark.slow
def test_hf_directory_opens_with_from_pretrained_and_round_trips(tmp_path, src):
    from transformers import ViTMAEForPreTraining, ViTMAEModel

    path, mae = src
    convert_checkpoint(path, "hf", tmp_path / "hf")
    hf = ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.norm_pix_loss and hf.config.num_hidden_layers == 2 and hf.config.decoder_num_hidden_layers == 2
    imgs, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 64)
    with torch.no_grad():
        loss, pred, _ = mae(imgs, mask_ratio=0.75, noise=noise)
        out = hf(pixel_values=imgs, noise=noise)
        enc = ViTMAEModel.from_pretrained(tmp_path / "hf").eval()(pixel_values=imgs, noise=noise).last_hidden_state
        latent, _, _ = mae.forward_encoder(imgs, 0.75, noise)
    torch.testing.assert_close(out.logits, pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc, latent, rtol=1e-5, atol=1e-5)
    back = checkpoints.read_state_dict(str(tmp_path / "hf"))  # X -> HF -> X
    assert back.keys() == mae.state_dict().keys() and all(torch.equal(back[k], v) for k, v in mae.state_dict().items())
    convert_checkpoint(tmp_path / "hf", "official", tmp_path / "again.pth")  # and the HF directory converts onward
    assert torch.equal(checkpoints.read_state_dict(str(tmp_path / "again.pth"))["blocks.1.mlp.fc2.weight"],
                       mae.state_dict()["blocks.1.mlp.fc2.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_file_loads_with_create_model_pretrained(tmp_path, src, suffix):
    import timm

    path, mae = src
    convert_checkpoint(path, "timm", tmp_path / f"vit{suffix}")
    for pool in ("avg", "token"):
        overlay = dict(file=str(tmp_path / f"vit{suffix}"))
        vit = timm.create_model("vit_tiny_patch8", pretrained=True, pretrained_cfg_overlay=overlay, global_pool=pool,
                                num_classes=5, **KW)
        own = vit.state_dict()
        assert all(torch.equal(own[k], v) for k, v in mae.state_dict().items() if k in own and not k.startswith("head"))
        assert ("norm.weight" in own) == (pool == "token") and torch.equal(own["blocks.1.attn.qkv.weight"],
                                                                          mae.state_dict()["blocks.1.attn.qkv.weight"])


def test_detectron2_file_loads_with_detection_checkpointer(tmp_path, src):
    pytest.importorskip("detectron2")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    path, mae = src
    convert_checkpoint(path, "detectron2", tmp_path / "d2.pth", det_pretrain_img_size=64)
    cfg = LazyConfig.load(str(ROOT / "configs/det/tiny_cpu.py"))
    cfg.model.backbone.net.depth = 2
    cfg.model.backbone.net.window_block_indexes = [0]
    model = instantiate(cfg.model)
    DetectionCheckpointer(model).load(str(tmp_path / "d2.pth"))
    own, sd = model.state_dict(), mae.state_dict()
    trunk = [k for k in own if k.startswith("backbone.net.") and "rel_pos" not in k]
    assert trunk and all(torch.equal(own[k], sd[k[len("backbone.net."):]]) for k in trunk)


def test_mmseg_file_loads_through_init_cfg(tmp_path, src):
    pytest.importorskip("mmseg")
    import mae_transfer.seg  # noqa: F401  (mmcv-lite compat: before mmseg.models)

    # isort: split
    from mmseg.models.backbones import MAE

    path, mae = src
    convert_checkpoint(path, "mmseg", tmp_path / "mm.pth")
    mm = MAE(img_size=64, patch_size=8, embed_dims=192, num_layers=2, num_heads=3, out_indices=(1,),
             init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "mm.pth")))
    mm.init_weights()
    sd = mae.state_dict()
    assert torch.equal(mm.layers[1].ffn.layers[1].weight, sd["blocks.1.mlp.fc2.weight"])
    assert torch.equal(mm.patch_embed.projection.weight, sd["patch_embed.proj.weight"])
    assert torch.equal(mm.layers[0].ln1.weight, sd["blocks.0.norm1.weight"])


@pytest.mark.slow
def test_convert_cli_reports_and_errors(tmp_path, src):
    path, _ = src
    r = subprocess.run([sys.executable, str(ROOT / "tools/convert.py"), str(path), "--to", "safetensors",
                        str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "dropped: nothing" in r.stdout, r.stderr[-2000:]
    written = checkpoints.read_state_dict(str(tmp_path / "x.safetensors"))
    assert written.keys() == checkpoints.read_state_dict(str(path)).keys()
    r = subprocess.run([sys.executable, str(ROOT / "tools/convert.py"), str(tmp_path / "nope.pth"), "--to", "hf",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_architecture_travels_and_is_never_guessed(tmp_path, tiny_mae):
    """The tests' 64-wide model has 4 heads: a width the table of known sizes lacks. With the model_args a
    checkpoint records, every consumer rebuilds it exactly; without them, conversion refuses in one line."""
    from mae_transfer.models.mae import architecture

    mae = tiny_mae()  # conftest.TINY: 64 wide, 4 heads, 2 blocks
    from conftest import TINY

    rec = {"name": None, "kwargs": dict(TINY)}
    checkpoints.save(tmp_path / "own.pth", {"model": mae.state_dict(), "model_args": rec})
    convert_checkpoint(tmp_path / "own.pth", "hf", tmp_path / "hf")
    import json
    assert json.loads((tmp_path / "hf/config.json").read_text())["num_attention_heads"] == 4
    for target, out in (("safetensors", "x.safetensors"), ("official", "x.pth"), ("mmseg", "mm.pth"),
                        ("detectron2", "d2.pth")):
        convert_checkpoint(tmp_path / "own.pth", target, tmp_path / out, det_pretrain_img_size=32)
    for out in ("hf", "x.safetensors", "x.pth", "mm.pth", "d2.pth"):  # each written format read back
        obj = checkpoints.load_file(tmp_path / out)
        sd = checkpoints.read_state_dict(obj)
        assert architecture(obj, sd)["num_heads"] == 4, out
        own = mae.state_dict()
        assert all(torch.equal(v, own[k]) for k, v in sd.items()), out  # what survives is exact
        assert {k for k in own if k.startswith("blocks.")} <= set(sd), out
    checkpoints.save(tmp_path / "bare.pth", {"model": mae.state_dict()})  # no record: refused, not guessed
    r = subprocess.run([sys.executable, "-m", "mae_transfer", "convert", str(tmp_path / "bare.pth"), "--to", "hf",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "head count" in r.stderr, r.stderr


def test_official_args_namespace_is_read_once_for_every_consumer(tmp_path):
    """An official training checkpoint carries an argparse.Namespace: its model, input size and
    norm_pix_loss decide the HF config and the rebuilt model alike."""
    import argparse

    from mae_transfer.convert import hf_config
    from mae_transfer.models.mae import architecture, mae_from_checkpoint

    torch.manual_seed(0)
    mae = M.mae_vit_tiny_patch8(img_size=32)
    args = argparse.Namespace(model="mae_vit_tiny_patch8", input_size=32, norm_pix_loss=True, mask_ratio=0.6)
    checkpoints.save(tmp_path / "off.pth", {"model": mae.state_dict(), "args": args})
    obj = checkpoints.load_file(tmp_path / "off.pth")
    sd = checkpoints.read_state_dict(obj)
    cfg = hf_config(obj, sd)
    assert cfg["norm_pix_loss"] and cfg["image_size"] == 32 and cfg["mask_ratio"] == 0.6
    rebuilt = mae_from_checkpoint(obj, sd)
    assert rebuilt.norm_pix_loss and architecture(obj, sd)["img_size"] == 32
    rebuilt.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("cls", ["ViTMAEForPreTraining", "ViTMAEModel"])
def test_hf_folders_saved_by_transformers_read_exactly(tmp_path, cls):
    """A folder `save_pretrained` wrote (transformers saves its legacy names: `decoder.decoder_encoder.layer.N`,
    a ViTMAEModel without the `vit.` prefix) reads as the same weights, and converts onward."""
    import transformers

    cfg = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                    image_size=32, patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=2,
                                    decoder_num_attention_heads=2, decoder_intermediate_size=64)
    torch.manual_seed(0)
    hf = getattr(transformers, cls)(cfg)
    hf.save_pretrained(tmp_path / "hf")
    sd = checkpoints.read_state_dict(tmp_path / "hf")
    ours = M.MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                                  decoder_depth=2, decoder_num_heads=2)
    own = ours.state_dict() if cls == "ViTMAEForPreTraining" else \
        {k: v for k, v in ours.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    assert sorted(sd) == sorted(own)
    from mae_transfer import layouts

    expected = hf.state_dict() if cls == "ViTMAEForPreTraining" else {"vit." + k: v for k, v in hf.state_dict().items()}
    got = layouts.to_hf(sd)
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    convert_checkpoint(tmp_path / "hf", "official", tmp_path / "o.pth")  # and onward


def test_outputs_are_new_readable_files(tmp_path, src):
    """A converted file never replaces one the user has, and gets the user's umask (not mkstemp's 0600)."""
    import os

    from mae_transfer.errors import ConfigError

    path, _ = src
    old = os.umask(0o022)
    try:
        convert_checkpoint(path, "timm", tmp_path / "vit.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "vit.pth").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ConfigError, match="exists"):
        convert_checkpoint(path, "official", tmp_path / "vit.pth")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "result.json").write_text("{}")
    with pytest.raises(ConfigError, match="exists"):
        convert_checkpoint(path, "hf", tmp_path / "hf")
