"""Fine-tuning / linear-probing encoders: timm's `VisionTransformer` in the official MAE layout.

`global_pool=True` -> mean of the patch tokens then `fc_norm` (no final `norm`), the official
fine-tuning layout; `False` -> the cls token after `norm` (linear probing). Registered with timm:

    timm.create_model('vit_base_patch16', checkpoint='mae_pretrain_vit_base.pth', num_classes=10)
    timm.create_model('vit_base_patch16.mae', pretrained=True)   # downloads only when asked
"""
import logging
import os
from typing import Dict, Optional

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.beit import Beit
from timm.models.beit import checkpoint_filter_fn as beit_filter
from timm.models.vision_transformer import VisionTransformer

from .. import checkpoints, hosts
from ..beit import is_beit
from .sizes import ENCODERS

_logger = logging.getLogger(__name__)
_FB = "https://dl.fbaipublicfiles.com/mae"


def checkpoint_filter_fn(state_dict: Dict, model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """Adapt any MAE checkpoint (official full / encoder-only / fine-tuned, mae-transfer pretrain,
    HF ViTMAE, safetensors) to `model`: decoder dropped, `norm` <-> `fc_norm` as the pooling asks,
    position table resampled exactly like the official `interpolate_pos_embed`, a head of the wrong
    shape dropped. (timm's own filter mistakes any dict with `mask_token` for DINOv2.)"""
    return _fit(checkpoints.read_state_dict(state_dict), model)


def _fit(sd: Dict[str, torch.Tensor], model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """checkpoint_filter_fn on a state dict already in canonical names."""
    own, out = model.state_dict(), {}
    sd, _ = hosts.adapt(sd, "timm", grid=model.patch_embed.grid_size)  # encoder only, its table at the model's grid
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            if k.startswith("head."):
                continue  # a classifier for other classes starts fresh
            raise checkpoints.CheckpointError(
                f"{k}: checkpoint shape {tuple(v.shape)} does not fit the model's {tuple(own[k].shape)}")
        out[k] = v
    return out


def _pretrained_filter(state_dict: Dict, model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """timm's `pretrained=True` path loads strictly: an `fc_norm` the file lacks starts fresh (the
    model's own initial values, as the official fine-tuning does) and a final `norm` the pooling
    does not use is left out."""
    sd = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    sd.update({k: v for k, v in own.items() if k.startswith("fc_norm.") and k not in sd})
    return {k: v for k, v in sd.items() if k in own or k.startswith("head.")}


def load_checkpoint(model: VisionTransformer, checkpoint) -> Dict:
    """Load `checkpoint` (path or dict) into `model`; the head and fc_norm may start fresh, the
    final `norm` of a pretrained file may be left out (global pooling uses fc_norm). Returns and
    logs the report {'loaded', 'fresh', 'ignored'}."""
    return _load(model, checkpoints.read_state_dict(checkpoint), _source(checkpoint))


def _load(model: VisionTransformer, sd: Dict[str, torch.Tensor], source: str) -> Dict:
    """load_checkpoint on a state dict already read (canonical names)."""
    report = checkpoints.load_into(model, _fit(sd, model), source,
                                   fresh_ok=r"^(head|fc_norm)\.", ignore_ok=r"^(head|fc_norm|norm)\.")
    _logger.info("loaded %s: %d tensors; fresh: %s; ignored: %s", source, len(report["loaded"]),
                 report["fresh"] or "none", report["ignored"] or "none")
    return report


def _source(checkpoint) -> str:
    return str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"


def _beit(variant: str, sd: Optional[Dict], beit: Optional[Dict], global_pool: str, source: str, **kwargs):
    """A BEiT checkpoint (or `beit` = its model_args, when rebuilt) fine-tunes as timm's own `Beit`: layer
    scale and relative position bias have no place in the MAE's ViT. `model.beit` is recorded with the
    model's arguments, so a fine-tuned BEiT is rebuilt as one."""

    beit = beit or {"use_abs_pos_emb": "pos_embed" in sd, "init_values": 1.0 if "blocks.0.gamma_1" in sd else None}
    model = build_model_with_cfg(Beit, variant, False, global_pool=global_pool, use_rel_pos_bias=True, **beit, **kwargs)
    model.beit = beit
    if sd is not None:
        own = model.state_dict()
        sd = {k: v for k, v in beit_filter(sd, model).items()  # timm resamples the tables and positions
              if not (k.startswith("head.") and k in own and own[k].shape != v.shape)}
        report = checkpoints.load_into(model, sd, source, fresh_ok=r"^(head|fc_norm)\.",
                                       ignore_ok=r"^(head|fc_norm|norm)\.")
        _logger.info("loaded %s, a BEiT, into timm's Beit: %d tensors (layer scale and relative position "
                     "tables included); fresh: %s", source, len(report["loaded"]), report["fresh"] or "none")
    return model


def _create(variant: str, pretrained: bool = False, checkpoint: Optional[str] = None,
            global_pool: bool = True, beit: Optional[Dict] = None, **kwargs) -> VisionTransformer:
    if isinstance(global_pool, bool):
        global_pool = "avg" if global_pool else "token"
    sd = checkpoints.read_state_dict(checkpoint) if checkpoint is not None else None
    if beit is not None or (sd is not None and is_beit(sd)):
        return _beit(variant, sd, beit, global_pool, _source(checkpoint), **kwargs)
    model = build_model_with_cfg(
        VisionTransformer, variant, pretrained, pretrained_filter_fn=_pretrained_filter,
        global_pool=global_pool, **kwargs)
    if checkpoint is not None:
        _load(model, sd, _source(checkpoint))
    return model


def _cfg(url="", **kwargs):
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "interpolation": "bicubic",
            "crop_pct": 0.875, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "patch_embed.proj", "classifier": "head", "license": "cc-by-nc-4.0", **kwargs}


default_cfgs = generate_default_cfgs({
    "vit_base_patch16.mae": _cfg(f"{_FB}/pretrain/mae_pretrain_vit_base.pth", num_classes=0),
    "vit_base_patch16.mae_ft_in1k": _cfg(f"{_FB}/finetune/mae_finetuned_vit_base.pth"),
    "vit_large_patch16.mae": _cfg(f"{_FB}/pretrain/mae_pretrain_vit_large.pth", num_classes=0),
    "vit_large_patch16.mae_ft_in1k": _cfg(f"{_FB}/finetune/mae_finetuned_vit_large.pth"),
    "vit_huge_patch14.mae": _cfg(f"{_FB}/pretrain/mae_pretrain_vit_huge.pth", num_classes=0),
    "vit_huge_patch14.mae_ft_in1k": _cfg(f"{_FB}/finetune/mae_finetuned_vit_huge.pth"),
    "vit_tiny_patch8.untrained": _cfg(input_size=(3, 64, 64), crop_pct=1.0),
    "vit_small_patch4.untrained": _cfg(input_size=(3, 28, 28), crop_pct=1.0),
    "vit_giant_patch14.untrained": _cfg(),
    "vit_2b_patch14.untrained": _cfg(),
})


@register_model
def vit_tiny_patch8(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_tiny_patch8", pretrained, **{**ENCODERS["vit_tiny_patch8"], **kwargs})


@register_model
def vit_small_patch4(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_small_patch4", pretrained, **{**ENCODERS["vit_small_patch4"], **kwargs})


@register_model
def vit_base_patch16(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_base_patch16", pretrained, **{**ENCODERS["vit_base_patch16"], **kwargs})


@register_model
def vit_large_patch16(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_large_patch16", pretrained, **{**ENCODERS["vit_large_patch16"], **kwargs})


@register_model
def vit_huge_patch14(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_huge_patch14", pretrained, **{**ENCODERS["vit_huge_patch14"], **kwargs})


@register_model
def vit_giant_patch14(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_giant_patch14", pretrained, **{**ENCODERS["vit_giant_patch14"], **kwargs})


@register_model
def vit_2b_patch14(pretrained=False, **kwargs) -> VisionTransformer:
    return _create("vit_2b_patch14", pretrained, **{**ENCODERS["vit_2b_patch14"], **kwargs})
