"""Fine-tuning encoders and the checkpoint module: loading, resampling, safety, formats."""
import argparse
import os

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from mae_transfer import checkpoints, hosts
from mae_transfer import models as M


def _base_full():
    torch.manual_seed(0)
    return M.mae_vit_base_patch16().state_dict()


def test_global_pool_layout_and_prelogits():
    sd = M.mae_vit_tiny_patch8().state_dict()
    gp = M.vit_tiny_patch8(num_classes=10, checkpoint={"model": sd})
    tok = M.vit_tiny_patch8(num_classes=10, global_pool=False, checkpoint={"model": sd})
    assert "fc_norm.weight" in gp.state_dict() and "norm.weight" not in gp.state_dict()
    assert "norm.weight" in tok.state_dict() and "fc_norm.weight" not in tok.state_dict()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = gp.forward_features(x)
        torch.testing.assert_close(gp.forward_head(f, pre_logits=True), gp.fc_norm(f[:, 1:].mean(1)))
        # the cls-token feature equals the MAE encoder's with nothing masked
        mae = M.mae_vit_tiny_patch8()
        mae.load_state_dict(sd)
        latent, _, _ = mae.forward_encoder(x, 0.0, noise=torch.arange(64.0).expand(2, -1))
        torch.testing.assert_close(tok.forward_head(tok.forward_features(x), pre_logits=True), latent[:, 0],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_official_full_and_encoder_files_load(tmp_path):
    sd = _base_full()
    enc = {k: v for k, v in sd.items() if not k.startswith(("decoder_", "mask_token"))}
    checkpoints.save(tmp_path / "full.pth", {"model": sd, "epoch": 799, "args": argparse.Namespace(blr=1.5e-4)})
    checkpoints.save(tmp_path / "enc.pth", {"model": enc})
    for name in ("full.pth", "enc.pth"):
        m = M.vit_base_patch16(num_classes=5, checkpoint=str(tmp_path / name))
        torch.testing.assert_close(m.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])
    mae = M.mae_vit_base_patch16()
    mae.load_state_dict(checkpoints.load_file(tmp_path / "full.pth")["model"], strict=True)


def test_pos_embed_resampled_exactly_like_official():
    sd = _base_full()
    m = M.vit_base_patch16(img_size=384, checkpoint={"model": sd})
    pe = sd["pos_embed"]
    # official interpolate_pos_embed: bicubic, align_corners=False, no antialias
    tok = pe[:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    tok = F.interpolate(tok, size=(24, 24), mode="bicubic", align_corners=False)
    ref = torch.cat([pe[:, :1], tok.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    torch.testing.assert_close(m.pos_embed.data, ref, rtol=0, atol=1e-6)
    timm_default = resample_abs_pos_embed(pe, [24, 24], num_prefix_tokens=1)  # antialias=True
    assert (timm_default - ref).abs().max() > 1e-3


def test_safe_loading_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Evil()}, path)
    with pytest.raises(checkpoints.CheckpointError, match="refused to unpickle"):
        checkpoints.load_file(path)
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="not a readable checkpoint"):
        checkpoints.load_file(tmp_path / "junk.pth")
    with pytest.raises(checkpoints.CheckpointError, match="not found"):
        checkpoints.load_file(tmp_path / "missing.pth")


def test_args_namespace_checkpoint_loads(tmp_path):
    path = tmp_path / "train.pth"
    # exactly what the official main_pretrain.py writes (torch.save's default protocol)
    torch.save({"model": {"cls_token": torch.ones(1, 1, 4)}, "optimizer": {}, "epoch": 3, "scaler": {},
                "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}, path)
    obj = checkpoints.load_file(path)
    assert obj["args"].mask_ratio == 0.75 and obj["epoch"] == 3


def test_safetensors_roundtrip(tmp_path):
    sd = M.mae_vit_tiny_patch8().state_dict()
    checkpoints.save_official(tmp_path / "m.safetensors", sd)
    back = checkpoints.read_state_dict(str(tmp_path / "m.safetensors"))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], v) for k, v in sd.items())
    mae = M.mae_vit_tiny_patch8(checkpoint=str(tmp_path / "m.safetensors"))
    assert torch.equal(mae.decoder_pred.weight, sd["decoder_pred.weight"])


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    checkpoints.save(path, {"model": {"a": torch.ones(2)}})

    def boom(obj, f, *a, **k):  # f: the file object checkpoints.save opened (so a failed write keeps its errno)
        f.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(path, {"model": {"a": torch.zeros(2)}})
    assert torch.equal(checkpoints.load_file(path)["model"]["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_misfit_checkpoint_is_a_clear_error():
    sd = M.mae_vit_tiny_patch8().state_dict()
    with pytest.raises(checkpoints.CheckpointError, match="does not fit"):
        M.vit_small_patch4(checkpoint={"model": sd})
    with pytest.raises(checkpoints.CheckpointError, match="unrecognised checkpoint layout"):
        checkpoints.read_state_dict({"foo.weight": torch.zeros(1)})


def test_detectron2_names():
    sd = M.mae_vit_huge_patch14(img_size=28, depth=1).state_dict()  # small but patch-14 huge-width
    d2, _ = hosts.adapt(sd, "detectron2", patch_size=16)
    assert d2["backbone.net.patch_embed.proj.weight"].shape[-2:] == (16, 16)
    assert not any(k.startswith(("backbone.net.decoder", "backbone.net.cls_token", "backbone.net.norm."))
                   for k in d2)
    assert "backbone.net.pos_embed" in d2


def test_env_report():
    from mae_transfer.env import collect_env

    report = collect_env()
    assert "detectron2" in report and ("compiled ops" in report or "not installed" in report)
