"""`MAEViT` in mmseg's MODELS registry: mmseg's own MAE backbone, initialised from any MAE
checkpoint (official full / encoder-only, tools/pretrain.py, timm, HF, safetensors):

    backbone=dict(type='MAEViT', checkpoint='mae_pretrain_vit_base.pth', img_size=(512, 512), ...)

Relative position tables start at zero (mmseg's MAE does that); everything else of the trunk must
come from the checkpoint, or initialisation fails with a clear error."""
import re

from mmengine.logging import print_log

from mmseg.models.backbones import MAE
from mmseg.registry import MODELS

from .. import checkpoints

FRESH_OK = re.compile(r"\.attn\.relative_position_(bias_table|index)$")


@MODELS.register_module()
class MAEViT(MAE):
    def __init__(self, *args, checkpoint: str = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint = checkpoint

    def init_weights(self):
        super().init_weights()  # mmseg's initialisation (zero relative position tables)
        if not self.checkpoint:
            return
        sd = checkpoints.to_mmseg(checkpoints.read_state_dict(self.checkpoint))
        sd = self.resize_abs_pos_embed(sd)  # mmseg's own bicubic resampling to img_size
        own = self.state_dict()
        missing = [k for k in own if k not in sd and not FRESH_OK.search(k)]
        if missing:
            raise checkpoints.CheckpointError(
                f"{self.checkpoint}: lacks {len(missing)} backbone weights, e.g. {missing[:3]} (a ViT of this size?)")
        misfit = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
        if misfit:
            raise checkpoints.CheckpointError(f"{self.checkpoint}: weights do not fit the config's ViT: {misfit[:3]}")
        self.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        fresh = [k for k in own if k not in sd and k.endswith("bias_table")]
        print_log(f"backbone {self.checkpoint}: loaded {len([k for k in sd if k in own])} tensors; fresh: "
                  f"{len(fresh)} relative position tables (zero), the neck and the heads", logger="current")
