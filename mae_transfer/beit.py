"""BEiT checkpoints (Bao et al., 2021: the MAE paper's Table 4-5 comparison) in the MAE's hosts.

A BEiT block is a ViT block with three additions: layer scale (`gamma_1`, `gamma_2`), a relative
position bias table per block (or one shared table, `rel_pos_bias.*`, in BEiT pretraining files), and
q / v biases without a k bias; it has no absolute position table. What each host keeps of it:

    fine-tuning (timm)     timm's own `Beit`: everything, outputs equal timm's BEiT
    mmseg (MAEViT)         everything: mmseg's MAE is a BEiT block (layer scale, relative tables);
                           tables resampled to the crop by timm's `resize_rel_pos_bias_table`
    detectron2 (ViTDet)    layer scale folded into attn.proj / mlp.fc2 (exact at load); no place for the
                           table (ViTDet's decomposed rel-pos start fresh): said in the load report

q / v biases become `qkv.bias` with a zero k part and the missing absolute table becomes zeros: both
exact (attention is unchanged by a constant added to every key; BEiT adds no absolute positions).
"""
import math
import re
from typing import Dict, List, Tuple

import torch

from .errors import CheckpointError

StateDict = Dict[str, torch.Tensor]
_TABLE = "attn.relative_position_bias_table"


def is_beit(sd: StateDict) -> bool:
    return any(re.search(r"\.(attn\.[qv]_bias|gamma_[12])$", k) or k.endswith("relative_position_bias_table")
               for k in sd)


def canonical(sd: StateDict) -> StateDict:
    """Official BEiT / timm `Beit` names -> timm's `Beit` names: a shared table copied into every block
    (as BEiT's own fine-tuning does); the masked-image-modelling head (`lm_head`), `mask_token` and the
    index buffers dropped."""
    out = {k: v for k, v in sd.items() if not k.startswith(("lm_head.", "mask_token", "rel_pos_bias."))
           and not k.endswith("relative_position_index")}
    shared = sd.get("rel_pos_bias.relative_position_bias_table")
    if shared is not None:
        for i in sorted({int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k))}):
            out.setdefault(f"blocks.{i}.{_TABLE}", shared.clone())
    return out


def table_grid(sd: StateDict) -> int:
    """The pretraining patch grid side g of a (2g-1)^2 + 3 entry relative position table."""
    n = next((v.shape[0] for k, v in sd.items() if k.endswith(_TABLE)), None)
    if n is None:
        raise CheckpointError("a BEiT-style checkpoint with neither absolute nor relative positions: "
                              "no ViT here can hold it")
    return (math.isqrt(n - 3) + 1) // 2


# what each host's ViT can hold of a BEiT: (layer scale, relative position tables)
HOSTS = {"detectron2": (False, False), "mmseg": (True, True)}


def for_host(sd: StateDict, host: str) -> Tuple[StateDict, List[str]]:
    """`sd` (canonical) as `host`'s ViT takes it, and what was adapted (nothing for a checkpoint that is
    not a BEiT)."""
    return as_vit(sd, *HOSTS[host]) if is_beit(sd) else (sd, [])


def as_vit(sd: StateDict, keep_layer_scale: bool, keep_tables: bool) -> Tuple[StateDict, List[str]]:
    """A BEiT (canonical) as a ViT with a qkv bias and absolute positions; returns it and what was adapted,
    for the host's load report."""
    out, notes = dict(sd), []
    for k in [k for k in sd if k.endswith(".attn.q_bias")]:
        q, v = sd[k], sd[k.replace(".q_bias", ".v_bias")]
        out[k.replace(".q_bias", ".qkv.bias")] = torch.cat([q, torch.zeros_like(q), v])
        del out[k], out[k.replace(".q_bias", ".v_bias")]
    if "pos_embed" not in sd:
        g, d = table_grid(sd), sd["patch_embed.proj.weight"].shape[0]
        out["pos_embed"] = torch.zeros(1, 1 + g * g, d)
        notes.append("no absolute positions (zeros, as BEiT)")
    if not keep_layer_scale:
        for k in [k for k in sd if k.endswith((".gamma_1", ".gamma_2"))]:
            layer = k.replace(".gamma_1", ".attn.proj").replace(".gamma_2", ".mlp.fc2")
            out[f"{layer}.weight"] = sd[f"{layer}.weight"] * sd[k][:, None]
            out[f"{layer}.bias"] = sd[f"{layer}.bias"] * sd[k]
            del out[k]
        notes.append("layer scale folded into attn.proj and mlp.fc2")
    if not keep_tables:
        dropped = [k for k in out if k.endswith(_TABLE)]
        for k in dropped:
            del out[k]
        notes.append(f"{len(dropped)} BEiT relative position tables dropped (no place in this ViT)")
    return out, notes
