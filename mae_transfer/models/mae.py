"""Masked Autoencoders Are Scalable Vision Learners (He et al., 2021) -- the published model.

Parameter names equal the official `models_mae.py`, so official `*_full.pth` and
`mae_visualize_*.pth` checkpoints load with `strict=True` and give the official outputs.
Transformer blocks and the patch embedding are timm's (attention runs through
`F.scaled_dot_product_attention`).
"""
from functools import partial
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models import register_model
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from .. import checkpoints
from ..reading import validate
from ..schemas import ModelArgs
from .masking import make_noise, random_masking
from .pos_embed import get_2d_sincos_pos_embed
from .sizes import ARCHS, SHORT


class MaskedAutoencoderViT(nn.Module):
    """Asymmetric encoder/decoder: the encoder sees only the visible patches; the light decoder
    sees the encoded patches plus mask tokens and predicts the pixels of the removed ones."""

    def __init__(
        self, img_size: Union[int, Tuple[int, int]] = 224, patch_size: int = 16, in_chans: int = 3,
        embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
        decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0, norm_layer=partial(nn.LayerNorm, eps=1e-6), decoder_mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False, mask_strategy: str = "random",
    ):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.norm_pix_loss, self.mask_strategy = norm_pix_loss, mask_strategy
        self.grad_checkpointing = False

        # --- encoder ---
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size  # (h, w)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # fixed sin-cos table (a parameter, as in the official code, so checkpoints carry it)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)

        # --- decoder ---
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, decoder_mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
             for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.initialize_weights()

    def initialize_weights(self):
        self.pos_embed.data.copy_(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.grid_size, True)[None])
        self.decoder_pos_embed.data.copy_(
            get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid_size, True)[None]
        )
        w = self.patch_embed.proj.weight.data  # init like nn.Linear, not nn.Conv2d
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # following official JAX ViT
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def no_weight_decay(self):
        """Names the optimizer leaves undecayed besides biases and norms (timm's hook)."""
        return {"pos_embed", "cls_token", "mask_token", "decoder_pos_embed"}

    # --- patches <-> images ---
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W] -> [N, L, p*p*C], each patch ordered (p, q, c): channel fastest."""
        p, c = self.patch_size, self.in_chans
        N, _, H, W = imgs.shape
        h, w = H // p, W // p
        x = imgs.reshape(N, c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(N, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: [N, L, p*p*C] -> imgs [N, C, H, W]."""
        p, c = self.patch_size, self.in_chans
        h, w = grid or self.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def _tables(self, grid: Tuple[int, int]):
        """Position tables for a patch grid; sin-cos is exact for any grid, so other (also
        non-square) input sizes get the table the model would have been built with."""
        if tuple(grid) == tuple(self.grid_size):
            return self.pos_embed, self.decoder_pos_embed
        make = lambda t: get_2d_sincos_pos_embed(t.shape[-1], grid, True)[None].to(t)  # noqa: E731
        return make(self.pos_embed), make(self.decoder_pos_embed)

    def _grid(self, imgs: torch.Tensor) -> Tuple[int, int]:
        H, W = imgs.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {self.patch_size}")
        return H // self.patch_size, W // self.patch_size

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block's activations in the backward pass instead of keeping them (timm's switch)."""
        self.grad_checkpointing = enable

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    # --- the model ---
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        grid = self._grid(imgs)
        pos_embed, _ = self._tables(grid)
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)  # [N, L, D]; any H, W
        x = x + pos_embed[:, 1:, :]
        if noise is None and self.mask_strategy != "random":
            noise = make_noise(self.mask_strategy, x.shape[0], grid, mask_ratio, x.device)
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # x: [N, L_vis, D]
        cls_token = (self.cls_token + pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), mask, ids_restore  # latent: [N, 1 + L_vis, D]

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor, grid: Optional[Tuple[int, int]] = None):
        _, decoder_pos_embed = self._tables(grid or self.grid_size)
        x = self.decoder_embed(x)  # [N, 1 + L_vis, Dd]
        N, L = ids_restore.shape
        # put the encoded patches and mask tokens back in image order
        mask_tokens = self.mask_token.expand(N, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [N, L, Dd] in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + decoder_pos_embed
        x = self._run_blocks(self.decoder_blocks, x)
        return self.decoder_pred(self.decoder_norm(x[:, 1:, :]))  # [N, L, p*p*C]: no prediction for cls

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only; targets normalised per patch when
        `norm_pix_loss` (the paper's default: better representations)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # [N, L], mean loss per patch
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: Optional[torch.Tensor] = None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, self._grid(imgs))  # [N, L, p*p*C]
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


# ---------------------------------------------------------------------------------------- factories
# Registered with timm too: timm.create_model('mae_vit_base_patch16', norm_pix_loss=True).


def _mae(pretrained=False, checkpoint=None, **kwargs) -> MaskedAutoencoderViT:
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # passed by timm.create_model
        kwargs.pop(k, None)
    if pretrained:
        raise ValueError("nothing is downloaded: pass checkpoint='path/to/mae_*.pth' instead of pretrained=True")
    model = MaskedAutoencoderViT(**kwargs)
    if checkpoint is not None:
        model.load_state_dict(checkpoints.read_state_dict(checkpoint), strict=True)
    return model


@register_model
def mae_vit_tiny_patch8_dec128d2b(pretrained=False, **kwargs):
    """ViT-Ti/8 for 64-px images on a CPU (the demo model)."""
    return _mae(pretrained, **{**ARCHS["mae_vit_tiny_patch8_dec128d2b"], **kwargs})


@register_model
def mae_vit_small_patch4_dec256d4b(pretrained=False, **kwargs):
    """ViT-S/4 for 28/32-px images (Fashion-MNIST, CIFAR) on a CPU."""
    return _mae(pretrained, **{**ARCHS["mae_vit_small_patch4_dec256d4b"], **kwargs})


@register_model
def mae_vit_base_patch16_dec512d8b(pretrained=False, **kwargs):
    return _mae(pretrained, **{**ARCHS["mae_vit_base_patch16_dec512d8b"], **kwargs})


@register_model
def mae_vit_large_patch16_dec512d8b(pretrained=False, **kwargs):
    return _mae(pretrained, **{**ARCHS["mae_vit_large_patch16_dec512d8b"], **kwargs})


@register_model
def mae_vit_huge_patch14_dec512d8b(pretrained=False, **kwargs):
    return _mae(pretrained, **{**ARCHS["mae_vit_huge_patch14_dec512d8b"], **kwargs})


@register_model
def mae_vit_giant_patch14_dec512d8b(pretrained=False, **kwargs):
    return _mae(pretrained, **{**ARCHS["mae_vit_giant_patch14_dec512d8b"], **kwargs})


@register_model
def mae_vit_2b_patch14_dec512d8b(pretrained=False, **kwargs):
    return _mae(pretrained, **{**ARCHS["mae_vit_2b_patch14_dec512d8b"], **kwargs})


# recommended archs under the official short names, registered with timm as well
@register_model
def mae_vit_tiny_patch8(pretrained=False, **kwargs):
    return mae_vit_tiny_patch8_dec128d2b(pretrained, **kwargs)


@register_model
def mae_vit_small_patch4(pretrained=False, **kwargs):
    return mae_vit_small_patch4_dec256d4b(pretrained, **kwargs)


@register_model
def mae_vit_base_patch16(pretrained=False, **kwargs):  # decoder: 512 dim, 8 blocks
    return mae_vit_base_patch16_dec512d8b(pretrained, **kwargs)


@register_model
def mae_vit_large_patch16(pretrained=False, **kwargs):  # decoder: 512 dim, 8 blocks
    return mae_vit_large_patch16_dec512d8b(pretrained, **kwargs)


@register_model
def mae_vit_huge_patch14(pretrained=False, **kwargs):  # decoder: 512 dim, 8 blocks
    return mae_vit_huge_patch14_dec512d8b(pretrained, **kwargs)


@register_model
def mae_vit_giant_patch14(pretrained=False, **kwargs):  # decoder: 512 dim, 8 blocks
    return mae_vit_giant_patch14_dec512d8b(pretrained, **kwargs)


@register_model
def mae_vit_2b_patch14(pretrained=False, **kwargs):  # decoder: 512 dim, 8 blocks
    return mae_vit_2b_patch14_dec512d8b(pretrained, **kwargs)


# --------------------------------------------------------------------- which MAE a checkpoint holds
def training_args(obj) -> dict:
    """The `args` a training checkpoint carries -- an `argparse.Namespace` in official ones, a dict in
    this toolkit's -- as a dict ({} when there are none). The one reader of them."""
    a = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(a, dict):
        return dict(a)
    return dict(vars(a)) if hasattr(a, "__dict__") else {}


def _from_shapes(sd) -> dict:
    """Sizes of a checkpoint that records no architecture, matched against ARCHS; an unknown width or
    depth is an error rather than a guessed head count."""
    d, p = sd["patch_embed.proj.weight"].shape[0], sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    enc = {(a["embed_dim"], a["depth"]): a["num_heads"] for a in ARCHS.values()}
    if (d, depth) not in enc:
        raise ValueError(f"a {d}-wide, {depth}-block ViT is not a known size ({', '.join(SHORT)}) and the "
                         f"checkpoint records no model_args: its head count cannot be told from its weights")
    kw = dict(patch_size=p, in_chans=sd["patch_embed.proj.weight"].shape[1], embed_dim=d, depth=depth,
              num_heads=enc[(d, depth)], img_size=int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) * p)
    kw["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / d  # ViT-g's 48/11
    if "decoder_pred.weight" in sd:
        dd = sd["mask_token"].shape[-1]
        ddepth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks."))
        dec = {(a["decoder_embed_dim"], a["decoder_depth"]): a["decoder_num_heads"] for a in ARCHS.values()}
        if (dd, ddepth) not in dec:
            raise ValueError(f"a {dd}-wide, {ddepth}-block MAE decoder is not a known size and the checkpoint "
                             f"records no model_args")
        kw.update(decoder_embed_dim=dd, decoder_depth=ddepth, decoder_num_heads=dec[(dd, ddepth)],
                  decoder_mlp_ratio=sd["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dd)
    return kw


def architecture(obj, sd) -> dict:
    """The MaskedAutoencoderViT keyword arguments of the model in checkpoint `obj` (state dict `sd`, in
    official names), in this order: the `model_args` this toolkit's checkpoints record; the `args` of an
    official training checkpoint (`model`, `input_size`, `norm_pix_loss`); the table of known sizes."""
    rec = obj.get("model_args") if isinstance(obj, dict) else None
    if rec is not None:  # through its schema: a hand-edited or foreign record is one line, not a traceback
        rec = validate(rec, ModelArgs, ValueError, "model_args").model_dump()
    args = training_args(obj)
    known = ARCHS.get(SHORT.get(rec.get("name"), rec.get("name")), {}) if isinstance(rec, dict) else {}
    if isinstance(rec, dict) and "embed_dim" in {**known, **rec.get("kwargs", {})}:
        kw = {**known, **rec.get("kwargs", {})}
    elif args.get("model") in ARCHS or SHORT.get(args.get("model")):
        kw = dict(ARCHS[SHORT.get(args["model"], args["model"])])
        size = args.get("input_size", args.get("img_size"))
        kw.update({**({"img_size": size} if size else {}), "norm_pix_loss": bool(args.get("norm_pix_loss", False))})
        kw.update(args.get("model_kwargs") or {})
    else:
        kw = _from_shapes(sd)
        kw["norm_pix_loss"] = bool(args.get("norm_pix_loss", False))
    if "decoder_pred.weight" not in sd:  # an encoder-only file: no decoder sizes to claim
        kw = {k: v for k, v in kw.items() if not k.startswith("decoder_")}
    return kw


def mae_from_checkpoint(obj, sd) -> MaskedAutoencoderViT:
    """Rebuild the MAE of a full checkpoint (see `architecture`). ValueError for an encoder-only file:
    it has no decoder to reconstruct with."""
    if "decoder_pred.weight" not in sd:
        raise ValueError("this checkpoint has no decoder (an encoder-only release such as "
                         "mae_pretrain_vit_*.pth): it cannot reconstruct images. Use a *_full.pth / "
                         "mae_visualize_*.pth file or a checkpoint from `mae-transfer pretrain`")
    return MaskedAutoencoderViT(**architecture(obj, sd))


def read_with(path, build: Callable):
    """(state dict, build(obj, sd)) of the checkpoint file at `path` -- `build` is `architecture` or
    `mae_from_checkpoint` -- its ValueError (unknown size, no decoder) a one-line CheckpointError."""

    obj = checkpoints.load_file(path)
    sd = checkpoints.read_state_dict(obj)
    try:
        return sd, build(obj, sd)
    except (ValueError, TypeError, KeyError, IndexError) as e:  # unknown size, no decoder, odd model_args
        raise checkpoints.CheckpointError(f"{path}: {e}") from None


def load_mae(path) -> MaskedAutoencoderViT:
    """The full MAE in the checkpoint file at `path`, rebuilt from what it records and loaded strictly;
    an encoder-only, unknown-size or unreadable file is a CheckpointError (one line)."""

    sd, model = read_with(path, mae_from_checkpoint)
    checkpoints.load_into(model, sd, f"{path} (as its model_args describe it)")  # strict, one line if not
    return model
