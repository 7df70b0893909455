"""The paper's comparison checkpoints (Tables 4-5: supervised, MoCo v3, DINO, BEiT), made in the test with
seeded random weights in each layout, read by the one checkpoint module and loaded into the fine-tuning
ViT, detectron2's backbone and mmseg's backbone; outputs equal to the layout's own model where one exists."""
from pathlib import Path

import pytest
import torch

from mae_transfer import checkpoints
from mae_transfer import models as M

ROOT = Path(__file__).resolve().parents[1]


def _layout_file(path, layout: str):
    """A seeded ViT-Ti/8 saved in one of the paper's comparison layouts; returns the source ViT."""
    torch.manual_seed(0)
    src = M.create_encoder("vit_tiny_patch8", num_classes=0, global_pool=False).eval()
    sd = src.state_dict()
    if layout == "moco_v3":  # module.base_encoder.*, momentum encoder, predictor, projection head
        obj = {"epoch": 300, "arch": "vit_tiny", "state_dict": {
            **{f"module.base_encoder.{k}": v for k, v in {**sd, "head.0.weight": torch.randn(8, 192)}.items()},
            **{f"module.momentum_encoder.{k}": v + 1 for k, v in sd.items()},
            "module.predictor.0.weight": torch.randn(8, 8)}}
    elif layout == "dino":  # DINO's training checkpoint: teacher / student, backbone. prefix, DINO head
        obj = {"epoch": 100, "teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                                         "head.mlp.0.weight": torch.randn(8, 192)},
               "student": {f"module.backbone.{k}": v - 1 for k, v in sd.items()}}
    else:  # a supervised DeiT-style file with its classifier
        obj = {"model": {**sd, "head.weight": torch.randn(1000, 192), "head.bias": torch.zeros(1000)}}
    torch.save(obj, path)
    return src


LAYOUTS = ["moco_v3", "dino", "deit"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_self_supervised_and_supervised_layouts_load(tmp_path, layout):
    """Each layout gives the fine-tuning encoder its own weights, heads dropped, outputs equal to that ViT's."""
    src = _layout_file(tmp_path / "ck.pth", layout)
    sd = src.state_dict()
    read = checkpoints.read_state_dict(tmp_path / "ck.pth")
    assert set(read) - {"head.weight", "head.bias"} == set(sd)
    assert all(torch.equal(read[k], sd[k]) for k in sd)  # the teacher / query encoder, not the other
    ft = M.create_encoder("vit_tiny_patch8", num_classes=3, global_pool=False, checkpoint=str(tmp_path / "ck.pth"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ft.eval().forward_features(x), src.forward_features(x), rtol=0, atol=0)
    assert ft.head.weight.shape == (3, 192)  # a fresh classifier, whatever the file had


@pytest.mark.parametrize("layout", LAYOUTS)
def test_comparison_layouts_load_into_detectron2_and_mmseg(tmp_path, layout):
    """The same files as ViTDet's and UperNet's backbones, through the hosts' own classes, with a load
    report: every trunk weight from the file, only the hosts' relative position tables fresh."""
    pytest.importorskip("detectron2")
    pytest.importorskip("mmseg")
    from detectron2.config import LazyConfig, instantiate
    from mmseg.registry import MODELS

    import mae_transfer.seg  # noqa: F401  (registers MAEViT)
    from mae_transfer.det.checkpoint import FRESH_OK, load_backbone

    sd = _layout_file(tmp_path / "ck.pth", layout).state_dict()
    det = instantiate(LazyConfig.load(str(ROOT / "configs/det/tiny_cpu.py")).model)
    report = load_backbone(det, str(tmp_path / "ck.pth"))
    fresh = [k for k in report["fresh"] if k.startswith("backbone.net.")]
    assert fresh and all(FRESH_OK.search(k) for k in fresh)
    assert len(report["loaded"]) == len([k for k in sd if not k.startswith(("cls_token", "norm."))])
    assert torch.equal(det.backbone.net.blocks[11].attn.qkv.weight, sd["blocks.11.attn.qkv.weight"])
    seg = MODELS.build(dict(type="MAEViT", checkpoint=str(tmp_path / "ck.pth"), img_size=(64, 64), patch_size=8,
                            embed_dims=192, num_layers=12, num_heads=3, init_values=1.0, out_indices=[3, 5, 7, 11]))
    seg.init_weights()
    assert torch.equal(seg.layers[11].attn.qkv.weight, sd["blocks.11.attn.qkv.weight"])
    assert torch.equal(seg.layers[0].ffn.layers[1].weight, sd["blocks.0.mlp.fc2.weight"])


def _beit(path, official: bool):
    """A seeded timm `Beit` ViT-Ti/8 (layer scale, relative position tables, q / v biases all made
    non-trivial) saved as timm's file (`official=False`, per-block tables, a classifier) or as BEiT's own
    pretraining checkpoint (one shared table, `lm_head`, `mask_token`); returns the source model."""
    from timm.models.beit import Beit

    torch.manual_seed(0)
    src = Beit(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3, use_abs_pos_emb=False,
               use_rel_pos_bias=True, init_values=0.1, num_classes=0, global_pool="token").eval()
    with torch.no_grad():
        for name, p in src.named_parameters():
            if name.endswith(("gamma_1", "gamma_2", "q_bias", "v_bias", "relative_position_bias_table")):
                p.copy_(0.3 * torch.randn_like(p))
        if official:  # one table shared by every block, as BEiT pretrains
            for blk in src.blocks[1:]:
                blk.attn.relative_position_bias_table.copy_(src.blocks[0].attn.relative_position_bias_table)
    sd = src.state_dict()
    if official:
        table = sd["blocks.0.attn.relative_position_bias_table"]
        sd = {k: v for k, v in sd.items() if "relative_position" not in k}
        sd.update({"rel_pos_bias.relative_position_bias_table": table, "mask_token": torch.zeros(1, 1, 192),
                   "lm_head.weight": torch.randn(8192, 192), "lm_head.bias": torch.zeros(8192)})
    else:
        sd.update({"head.weight": torch.randn(1000, 192), "head.bias": torch.zeros(1000)})
    torch.save({"model": sd}, path)
    return src


@pytest.mark.parametrize("official", [True, False], ids=["beit-pretrain", "timm-beit"])
def test_beit_fine_tunes_as_timms_beit(tmp_path, official):
    src = _beit(tmp_path / "beit.pth", official)
    ft = M.create_encoder("vit_tiny_patch8", num_classes=3, global_pool=False, checkpoint=str(tmp_path / "beit.pth"))
    assert type(ft).__name__ == "Beit" and ft.head.weight.shape == (3, 192)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ft.eval().forward_features(x), src.forward_features(x), rtol=0, atol=0)
    # a fine-tuned BEiT records how it was built, and is rebuilt as one (never guessed from shapes)
    again = M.create_encoder(ft.model_args["name"], **ft.model_args["kwargs"])
    again.load_state_dict(ft.state_dict())
    assert type(again).__name__ == "Beit"


def test_beit_in_mmseg_keeps_everything(tmp_path):
    """mmseg's MAE block is a BEiT block: layer scale and tables carried, features equal timm's BEiT's."""
    pytest.importorskip("mmseg")
    from mmseg.registry import MODELS

    import mae_transfer.seg  # noqa: F401

    src = _beit(tmp_path / "beit.pth", official=True)
    seg = MODELS.build(dict(type="MAEViT", checkpoint=str(tmp_path / "beit.pth"), img_size=(64, 64), patch_size=8,
                            embed_dims=192, num_layers=12, num_heads=3, init_values=1.0, out_indices=[5, 11],
                            norm_cfg=dict(type="LN", eps=1e-6)))
    seg.init_weights()
    seg.eval()  # (mmseg's train() returns None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = seg(x)
        t = src.patch_embed(x)
        t = torch.cat([src.cls_token.expand(2, -1, -1), t], 1)
        for blk in src.blocks:
            t = blk(t)
    torch.testing.assert_close(feats[-1], t[:, 1:].transpose(1, 2).reshape(2, 192, 8, 8), rtol=1e-4, atol=1e-4)
    # mmseg's own geometric resampling when the crop differs from pretraining
    big = MODELS.build(dict(type="MAEViT", checkpoint=str(tmp_path / "beit.pth"), img_size=(128, 128), patch_size=8,
                            embed_dims=192, num_layers=12, num_heads=3, init_values=1.0))
    big.init_weights()
    assert big.layers[0].attn.relative_position_bias_table.abs().sum() > 0


def test_beit_in_detectron2_folds_layer_scale_and_says_what_it_drops(tmp_path, caplog):
    """detectron2's ViT has no layer scale (folded: exact), no BEiT table (dropped, said) and no cls token
    (ViTDet's design): its global-attention ViT equals timm's BEiT blocks run on the patch tokens alone."""
    pytest.importorskip("detectron2")
    from detectron2.modeling import ViT
    from timm.models.beit import Beit

    from mae_transfer.det.checkpoint import load_backbone

    src = _beit(tmp_path / "beit.pth", official=True)
    net = ViT(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3, pretrain_img_size=64,
              norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), window_size=0)
    with caplog.at_level("INFO", logger="mae_transfer"):
        report = load_backbone(net, str(tmp_path / "beit.pth"), prefix="")
    assert any("layer scale folded" in n for n in report["notes"])
    assert any("12 BEiT relative position tables dropped" in n for n in report["notes"])
    assert "is a BEiT" in caplog.text
    ref = Beit(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3, use_abs_pos_emb=False,
               init_values=0.1, num_classes=0, global_pool="token").eval()  # the same BEiT without its tables
    ref.load_state_dict({k: v for k, v in src.state_dict().items() if "relative_position" not in k})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = ref.patch_embed(x)
        for blk in ref.blocks:
            t = blk(t)
        torch.testing.assert_close(net.eval()(x)["last_feat"], t.transpose(1, 2).reshape(2, 192, 8, 8),
                                   rtol=1e-4, atol=1e-4)


def test_beit_converts_to_every_host_that_can_hold_it(tmp_path, capsys):
    from mae_transfer.cli import main

    src = _beit(tmp_path / "beit.pth", official=False)
    for to, out in (("timm", "t.pth"), ("detectron2", "d2.pth"), ("mmseg", "mm.pth")):
        main(["convert", str(tmp_path / "beit.pth"), "--to", to, str(tmp_path / out)])
    said = capsys.readouterr().out
    assert "adapted: no absolute positions (zeros, as BEiT); layer scale folded" in said
    mm = checkpoints.load_file(tmp_path / "mm.pth")["state_dict"]
    assert torch.equal(mm["layers.3.gamma_2"], src.blocks[3].gamma_2)  # mmseg keeps the layer scale
    # the timm file fine-tunes as the same BEiT
    ft = M.create_encoder("vit_tiny_patch8", num_classes=0, global_pool=False, checkpoint=str(tmp_path / "t.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ft.eval().forward_features(x), src.forward_features(x), rtol=0, atol=0)
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "beit.pth"), "--to", "hf", str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "a BEiT: HF's ViTMAE has no place" in err[0]
