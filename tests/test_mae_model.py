"""The MAE model is the published one: HF parity, official key lists, masking, tables, loss."""
import numpy as np
import pytest
import timm
import torch
from conftest import TINY

from mae_transfer import checkpoints, layouts
from mae_transfer import models as M
from mae_transfer.models.masking import make_noise, num_keep, random_masking


def _hf_model(norm_pix_loss):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(
        image_size=TINY["img_size"], patch_size=TINY["patch_size"], hidden_size=TINY["embed_dim"],
        num_hidden_layers=TINY["depth"], num_attention_heads=TINY["num_heads"], intermediate_size=4 * TINY["embed_dim"],
        decoder_hidden_size=TINY["decoder_embed_dim"], decoder_num_hidden_layers=TINY["decoder_depth"],
        decoder_num_attention_heads=TINY["decoder_num_heads"], decoder_intermediate_size=4 * TINY["decoder_embed_dim"],
        layer_norm_eps=1e-6, qkv_bias=True, mask_ratio=0.75, norm_pix_loss=norm_pix_loss, hidden_act="gelu")
    return ViTMAEForPreTraining(cfg).eval()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_equals_hf_vitmae(tiny_mae, norm_pix_loss):
    ours = tiny_mae(norm_pix_loss=norm_pix_loss)
    hf = _hf_model(norm_pix_loss)
    hf.load_state_dict(layouts.to_hf(ours.state_dict()), strict=True)
    torch.manual_seed(1)
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 16)
    with torch.no_grad():
        loss, pred, mask = ours(imgs, mask_ratio=0.75, noise=noise)
        out = hf(pixel_values=imgs, noise=noise)
    torch.testing.assert_close(mask, out.mask, rtol=0, atol=0)
    torch.testing.assert_close(pred, out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-5)
    # and back: HF names -> official names, bit-identical
    back = checkpoints.read_state_dict(hf.state_dict())
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_official_key_lists():
    # encoder names: timm's own MAE encoder (the official layout) is the reference
    ref = timm.create_model("vit_base_patch16_224", num_classes=0, global_pool="token").state_dict()
    full = M.mae_vit_base_patch16().state_dict()
    enc = [k for k in full if not k.startswith(("decoder_", "mask_token"))]
    assert len(full) == 254 and len(enc) == 150
    assert enc == list(ref)
    for fn, n_full, n_enc in [(M.mae_vit_large_patch16, 398, 294), (M.mae_vit_huge_patch14, 494, 390)]:
        with torch.device("meta"):
            sd = fn().state_dict()
        assert (len(sd), len([k for k in sd if not k.startswith(("decoder_", "mask_token"))])) == (n_full, n_enc)
    # decoder names: HF's decoder, mapped back by the checkpoint module
    hf_names = layouts.from_hf(layouts.to_hf(full))
    assert list(hf_names) != [] and set(hf_names) == set(full)


def test_noise_semantics_and_counts():
    x = torch.randn(2, 16, 8)
    noise = torch.rand(2, 16)
    vis, mask, ids_restore = random_masking(x, 0.75, noise)
    assert vis.shape == (2, 4, 8) and mask.sum(1).tolist() == [12, 12]
    # kept = the 4 smallest noise values, in ascending-noise order
    keep = noise.argsort(1)[:, :4]
    assert torch.equal(vis, torch.gather(x, 1, keep[..., None].expand(-1, -1, 8)))
    assert torch.equal(mask.bool(), ~torch.zeros_like(mask, dtype=torch.bool).scatter(1, keep, True))


@pytest.mark.parametrize("strategy", ["random", "block", "grid"])
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_strategies_keep_exact_count(strategy, ratio):
    grid = (14, 14)
    noise = make_noise(strategy, 4, grid, ratio)
    _, mask, _ = random_masking(torch.zeros(4, 196, 1), ratio, noise)
    assert (mask == 0).sum(1).tolist() == [num_keep(196, ratio)] * 4


def test_grid_and_block_shapes(tiny_mae):
    _, mask, _ = random_masking(torch.zeros(2, 196, 1), 0.75, make_noise("grid", 2, (14, 14), 0.75))
    kept = (mask[0] == 0).reshape(14, 14)
    expected = torch.zeros(14, 14, dtype=torch.bool)
    expected[::2, ::2] = True
    assert torch.equal(kept, expected)

    def neighbour_agreement(strategy):  # how often a masked patch's right neighbour is masked too
        torch.manual_seed(0)
        _, m, _ = random_masking(torch.zeros(16, 196, 1), 0.75, make_noise(strategy, 16, (14, 14), 0.75))
        m = m.reshape(16, 14, 14).bool()
        return (m[:, :, :-1] & m[:, :, 1:]).sum().item() / m[:, :, :-1].sum().item()
    assert neighbour_agreement("block") > neighbour_agreement("random") + 0.1
    model = tiny_mae(mask_strategy="grid")
    _, _, m = model(torch.randn(1, 3, 32, 32))
    assert m.reshape(4, 4)[::2, ::2].sum() == 0 and m.sum() == 12


def _official_sincos(dim, h, w):
    """The official numpy recipe (meshgrid(w, h): first half encodes the column)."""
    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        out = np.einsum("m,d->md", pos.reshape(-1), 1.0 / 10000**omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("hw", [(14, 14), (4, 6)])
def test_sincos_table(hw):
    ours = M.get_2d_sincos_pos_embed(64, hw, cls_token=True)
    ref = torch.from_numpy(_official_sincos(64, *hw)).float()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert ours.dtype == torch.float32


def test_loss_only_on_masked_patches(tiny_mae):
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    pred = torch.randn(2, 16, 192)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    base = model.forward_loss(imgs, pred, mask)
    p2 = pred.clone()
    p2[:, 12:] += 10.0  # visible patches: no effect
    assert torch.equal(model.forward_loss(imgs, p2, mask), base)
    p2[:, 0] += 1.0  # a masked patch: changes the loss
    assert model.forward_loss(imgs, p2, mask) != base
    target = model.patchify(imgs)
    ref = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(base, ref)


def test_norm_pix_loss(tiny_mae):
    imgs, pred = torch.rand(2, 3, 32, 32), torch.randn(2, 16, 192)
    mask = (torch.rand(2, 16) > 0.25).float()
    norm, plain = tiny_mae(norm_pix_loss=True), tiny_mae(norm_pix_loss=False)
    # per-patch normalised targets: invariant to a brightness/contrast change of the image
    torch.testing.assert_close(norm.forward_loss(imgs * 3 + 1, pred, mask), norm.forward_loss(imgs, pred, mask),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain.forward_loss(imgs * 3 + 1, pred, mask), plain.forward_loss(imgs, pred, mask))
    t = norm.patchify(imgs)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5  # unbiased var, as official
    expected = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(norm.forward_loss(imgs, pred, mask), expected)


def test_patchify_order_and_roundtrip(tiny_mae):
    model = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    x = model.patchify(imgs)
    # patch (0, 1), pixel (row 2, col 5), channel 1 sits at (p*p index 2*8+5) * 3 + 1
    assert x[0, 1, (2 * 8 + 5) * 3 + 1] == imgs[0, 1, 2, 8 + 5]
    assert torch.equal(model.unpatchify(x), imgs)


def test_non_square_inputs(tiny_mae):
    model = tiny_mae()
    loss, pred, mask = model(torch.randn(2, 3, 24, 40))
    assert pred.shape == (2, 15, 192) and mask.sum(1).tolist() == [15 - num_keep(15, 0.75)] * 2
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_timm_registry():
    for short, full in [("mae_vit_tiny_patch8", "mae_vit_tiny_patch8_dec128d2b"),
                        ("mae_vit_base_patch16", "mae_vit_base_patch16_dec512d8b")]:
        assert short in timm.list_models() and full in timm.list_models()  # both names registered, no fallback
    m = timm.create_model("mae_vit_tiny_patch8", norm_pix_loss=True)
    full = timm.create_model("mae_vit_tiny_patch8_dec128d2b")
    assert isinstance(m, M.MaskedAutoencoderViT) and m.norm_pix_loss
    assert m.state_dict().keys() == full.state_dict().keys()
    assert all(a.shape == b.shape for a, b in zip(m.state_dict().values(), full.state_dict().values()))
    v = timm.create_model("vit_tiny_patch8", num_classes=7)
    assert v.head.out_features == 7 and hasattr(v, "fc_norm")
