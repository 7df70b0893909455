"""Checkpoint layouts: the names each host gives the MAE's tensors, written once (canonical -> host) and read
both ways. Canonical = the official MAE / timm names (`blocks.0.attn.qkv.weight`, ...).

    canonical --to_hf / to_mmseg / (prefix)--> transformers ViTMAE / mmseg MAE / detectron2 ViTDet
    canonical <--from_hf / from_mmseg / from_detectron2-- the same files (checkpoints.read_state_dict)
"""
import re
from typing import Dict, Sequence, Tuple

import torch

from .errors import CheckpointError

StateDict = Dict[str, torch.Tensor]
DECODER = ("decoder_", "mask_token")


class Renames:
    """A rename table written once, as (canonical, host) pairs, applied in order one way and in reverse order
    the other. `^` anchors a pair at the start of a name, `#` stands for a block number."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self.pairs = list(pairs)

    @staticmethod
    def _rule(src: str, dst: str):
        anchored = src.startswith("^")
        src, dst = src.lstrip("^"), dst.lstrip("^")
        pattern = ("^" if anchored else "") + re.escape(src).replace(r"\#", r"(\d+)")
        return re.compile(pattern), dst.replace("#", r"\1")

    def _apply(self, key: str, rules) -> str:
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        return key

    def forward(self, key: str) -> str:
        return self._apply(key, [self._rule(c, h) for c, h in self.pairs])

    def backward(self, key: str) -> str:
        return self._apply(key, [self._rule(h, c) for c, h in reversed(self.pairs)])


# transformers 5.x ViTMAE (4.x names are first mapped onto 5.x by _HF4_TO_5, one way: nothing writes 4.x)
HF = Renames([
    ("^cls_token", "^vit.embeddings.cls_token"), ("^pos_embed", "^vit.embeddings.position_embeddings"),
    ("^patch_embed.proj.", "^vit.embeddings.patch_embeddings.projection."), ("^norm.", "^vit.layernorm."),
    ("^blocks.#.", "^vit.layers.#."), ("^decoder_blocks.#.", "^decoder.decoder_layers.#."),
    ("^decoder_embed", "^decoder.decoder_embed"), ("^mask_token", "^decoder.mask_token"),
    ("^decoder_pos_embed", "^decoder.decoder_pos_embed"), ("^decoder_norm", "^decoder.decoder_norm"),
    ("^decoder_pred", "^decoder.decoder_pred"),
    (".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."), (".attn.proj.", ".attention.o_proj."),
])
# transformers' ViTMAEConfig fields -> MaskedAutoencoderViT's keyword arguments (convert writes it backwards)
HF_CONFIG = {"image_size": "img_size", "patch_size": "patch_size", "num_channels": "in_chans",
             "hidden_size": "embed_dim", "num_hidden_layers": "depth", "num_attention_heads": "num_heads",
             "decoder_hidden_size": "decoder_embed_dim", "decoder_num_hidden_layers": "decoder_depth",
             "decoder_num_attention_heads": "decoder_num_heads", "norm_pix_loss": "norm_pix_loss"}
_HF4_TO_5 = [
    (r"^(embeddings|encoder|layernorm)\.", r"vit.\1."),  # ViTMAEModel's own file: no `vit.` prefix
    (r"^vit\.encoder\.layer\.", "vit.layers."),
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),  # as transformers 5 saves the decoder
    (r"\.attention\.attention\.(query|key|value)\.", lambda m: f".attention.{m.group(1)[0]}_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]
# mmseg's `MAE` backbone
MMSEG = Renames([
    ("^patch_embed.proj.", "^patch_embed.projection."), ("^blocks.#.", "^layers.#."),
    (".norm1.", ".ln1."), (".norm2.", ".ln2."), (".mlp.fc1.", ".ffn.layers.0.0."), (".mlp.fc2.", ".ffn.layers.1."),
])
D2_PREFIX = "backbone.net."  # ViTDet's ViT inside its Mask R-CNN



def to_hf(sd: StateDict) -> StateDict:
    """Canonical -> `transformers.ViTMAEForPreTraining` (5.x names); qkv split into q/k/v."""
    out = {}
    for k, v in sd.items():
        name = HF.forward(k)
        if ".attn.qkv." in name:
            for part, t in zip("qkv", v.chunk(3, dim=0)):
                out[name.replace(".attn.qkv.", f".attention.{part}_proj.")] = t.clone()
        else:
            out[name] = v
    return out


def to_mmseg(sd: StateDict) -> StateDict:
    """Canonical encoder -> `mmseg.models.backbones.MAE` names. The MAE has no layer scale, so
    gamma_1/gamma_2 are exactly ones (a BEiT brings its own); its final `norm` is unused by mmseg
    (features are taken from intermediate blocks, `final_norm=False`) and dropped with the decoder."""
    out = {MMSEG.forward(k): v for k, v in sd.items() if not k.startswith(DECODER + ("norm.", "fc_norm.", "head."))}
    for k in [k for k in out if k.endswith(".ln1.weight")]:  # a BEiT's own layer scale is kept
        out.setdefault(k.replace(".ln1.weight", ".gamma_1"), torch.ones_like(out[k]))
        out.setdefault(k.replace(".ln1.weight", ".gamma_2"), torch.ones_like(out[k]))
    return out


# --------------------------------------------------------------------------------------- from a host
def from_hf(sd: StateDict) -> StateDict:
    """HF ViTMAE (4.x or 5.x names) -> canonical; q/k/v merged into qkv."""
    sd = {_sub(k, _HF4_TO_5): v for k, v in sd.items()}
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"(.*)\.attention\.q_proj\.(weight|bias)$", k)
        if m:
            merged = torch.cat([sd[k.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"], dim=0)
            out[HF.backward(f"{m.group(1)}.attn.qkv.{m.group(2)}")] = merged
        elif not re.search(r"\.attention\.[kv]_proj\.", k):
            out[HF.backward(k)] = v
    return out


def from_mmseg(sd: StateDict) -> StateDict:
    """mmseg `MAE` backbone names (what `to_mmseg` writes) -> canonical. Layer scales other than ones
    have no place in the MAE and are refused."""
    out = {}
    for k, v in sd.items():
        if k.endswith((".gamma_1", ".gamma_2")):
            if not bool((v == 1).all()):
                raise CheckpointError(f"{k}: a layer scale other than ones (a BEiT-style model, not an MAE)")
            continue
        out[MMSEG.backward(k)] = v
    return out


def from_detectron2(sd: StateDict, prefix: str = D2_PREFIX) -> StateDict:
    """A detectron2 checkpoint's ViT (`backbone.net.*`) -> canonical; the rest of the detector left out."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _sub(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key
