"""One adapter from a checkpoint (canonical: official MAE / timm names) to the ViT of each host:

    sd, notes = hosts.adapt(canonical_sd, "detectron2", patch_size=16, grid=(14, 14))

    host         what `adapt` gives                                                  who calls it
    detectron2   `backbone.net.*` names of ViTDet's ViT; patch kernel and position   det/checkpoint.py, convert
                 table resampled; no cls token, final norm or decoder
    mmseg        mmseg's `MAE` backbone names (ln1/ln2, ffn.layers); layer scale      seg/backbone.py, convert
                 ones where the checkpoint has none
    timm         the encoder (decoder and mask token dropped); position table         models/vit.py, convert
                 resampled to `grid`
    hf           transformers' ViTMAE (5.x) names, qkv split into q/k/v               convert

A BEiT checkpoint is adapted first to what the host's ViT can hold (beit.py); the names are layouts.py's."""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import beit
from .errors import CheckpointError
from .layouts import D2_PREFIX, DECODER, StateDict, to_hf, to_mmseg  # noqa: F401  (D2_PREFIX: re-exported)
from .models.pos_embed import resample_pos_embed

HOSTS = ("detectron2", "mmseg", "timm", "hf")


# ----------------------------------------------------------------------------------------- to a host
def adapt(sd: StateDict, host: str, patch_size: Optional[int] = None, grid: Optional[Tuple[int, int]] = None,
          prefix: str = D2_PREFIX) -> Tuple[StateDict, List[str]]:
    """Canonical `sd` in `host`'s names, and what was adapted on the way (a BEiT's layer scale, ...).
    detectron2: the patch kernel resampled to `patch_size` and the position table to `grid` (its
    pretrain_img_size / patch), names under `prefix`; timm: the position table resampled to `grid`."""
    if host not in HOSTS:
        raise CheckpointError(f"unknown host {host!r}; choose one of {', '.join(HOSTS)}")
    if host == "hf":
        if beit.is_beit(sd):
            raise CheckpointError("a BEiT: HF's ViTMAE has no place for its layer scale and relative position bias "
                                  "(timm, detectron2, mmseg and the official layout keep it)")
        return to_hf(sd), []
    sd, notes = beit.for_host(sd, host) if host in beit.HOSTS else (sd, [])
    if host == "mmseg":
        return to_mmseg(sd), notes
    if host == "timm":
        sd = {k: v for k, v in sd.items() if not k.startswith(DECODER)}
        if grid is not None and "pos_embed" in sd:
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], grid)
        return sd, notes
    out = {}
    for k, v in sd.items():  # detectron2's ViT has no cls token (its table keeps the cls row), final norm, decoder
        if k.startswith(DECODER + ("cls_token", "norm.", "fc_norm.", "head.")):
            continue
        if k == "patch_embed.proj.weight" and patch_size:
            v = resize_patch_kernel(v, patch_size)
        if k == "pos_embed" and grid is not None:
            v = resample_pos_embed(v, grid)
        out[prefix + k] = v
    return out, notes


def resize_patch_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """[D, C, p, p] -> [D, C, size, size] by bicubic interpolation, as ViTDet did to run the
    patch-14 ViT-H with 16-px patches."""
    if weight.shape[-1] == size:
        return weight
    return F.interpolate(weight.float(), size=(size, size), mode="bicubic", align_corners=False).to(weight.dtype)
