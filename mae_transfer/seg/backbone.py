"""`MAEViT` in mmseg's MODELS registry: mmseg's own MAE backbone, initialised from any MAE
checkpoint (official full / encoder-only, mae-transfer pretrain, timm, HF, safetensors):

    backbone=dict(type='MAEViT', checkpoint='mae_pretrain_vit_base.pth', img_size=(512, 512), ...)

Relative position tables start at zero (mmseg's MAE does that; a BEiT checkpoint brings its own tables
and layer scale, mae_transfer/beit.py); everything else of the trunk must come from the checkpoint, or
initialisation fails with a clear error."""
import re

from mmengine.logging import print_log
from mmseg.models.backbones import MAE
from mmseg.registry import MODELS
from timm.layers import resize_rel_pos_bias_table

from .. import checkpoints, hosts

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
        # mmseg's MAE block is a BEiT block: a BEiT's layer scale and tables are kept
        sd, notes = hosts.adapt(checkpoints.read_state_dict(self.checkpoint), "mmseg")
        sd = self.resize_abs_pos_embed(sd)  # mmseg's own bicubic resampling to img_size
        own = self.state_dict()
        for k in [k for k in sd if k.endswith("relative_position_bias_table") and k in own]:
            if sd[k].shape != own[k].shape:  # a BEiT's table for another crop: timm's resampler (mmseg's own
                # resize_rel_pos_embed calls scipy's interp2d, which SciPy 1.14 removed)
                sd[k] = resize_rel_pos_bias_table(sd[k], new_window_size=self.patch_shape,
                                                  new_bias_shape=own[k].shape)
        report = checkpoints.load_into(self, sd, self.checkpoint, fresh_ok=FRESH_OK.pattern)
        print_log(f"backbone {self.checkpoint}: loaded {len(report['loaded'])} tensors; fresh: "
                  f"{sum(k.endswith('bias_table') for k in report['fresh'])} relative position tables (zero), "
                  "the neck and the heads" + (f"; a BEiT: {'; '.join(notes)}" if notes else ""), logger="current")
