"""`build_mae_vit_sfp_backbone` in detectron2's BACKBONE_REGISTRY, for yacs (CfgNode) configs:

    from mae_transfer.det.backbone import add_mae_vit_config
    cfg = get_cfg(); add_mae_vit_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_mae_vit_sfp_backbone"
    cfg.MODEL.MAE_VIT.WEIGHTS = "mae_pretrain_vit_base.pth"
Defaults are ViTDet's ViT-B; the modules are detectron2's own ViT and SimpleFeaturePyramid."""
import math
from functools import partial

import torch.nn as nn
from detectron2.config import CfgNode as CN
from detectron2.modeling import BACKBONE_REGISTRY, SimpleFeaturePyramid, ViT

from .checkpoint import load_backbone, max_pool_top_block


def add_mae_vit_config(cfg):
    cfg.MODEL.MAE_VIT = c = CN()
    c.IMG_SIZE, c.PATCH_SIZE, c.PRETRAIN_IMG_SIZE = 1024, 16, 224
    c.EMBED_DIM, c.DEPTH, c.NUM_HEADS, c.DROP_PATH_RATE = 768, 12, 12, 0.1
    c.WINDOW_SIZE, c.GLOBAL_BLOCKS, c.USE_REL_POS = 14, [2, 5, 8, 11], True
    c.OUT_CHANNELS, c.SCALE_FACTORS, c.SQUARE_PAD = 256, [4.0, 2.0, 1.0, 0.5], 1024
    c.WEIGHTS = ""  # any MAE checkpoint; loaded into the ViT when the backbone is built
    cfg.MODEL.FPN.NORM = "LN"
    return cfg


@BACKBONE_REGISTRY.register()
def build_mae_vit_sfp_backbone(cfg, input_shape):
    c = cfg.MODEL.MAE_VIT
    net = ViT(img_size=c.IMG_SIZE, patch_size=c.PATCH_SIZE, in_chans=input_shape.channels, embed_dim=c.EMBED_DIM,
              depth=c.DEPTH, num_heads=c.NUM_HEADS, drop_path_rate=c.DROP_PATH_RATE, window_size=c.WINDOW_SIZE,
              mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
              window_block_indexes=[i for i in range(c.DEPTH) if i not in c.GLOBAL_BLOCKS],
              use_rel_pos=c.USE_REL_POS, pretrain_img_size=c.PRETRAIN_IMG_SIZE, out_feature="last_feat")
    last = f"p{int(round(math.log2(c.PATCH_SIZE / min(c.SCALE_FACTORS))))}"  # coarsest level, pooled once more
    backbone = SimpleFeaturePyramid(net, "last_feat", c.OUT_CHANNELS, tuple(c.SCALE_FACTORS),
                                    top_block=max_pool_top_block(last), norm=cfg.MODEL.FPN.NORM,
                                    square_pad=c.SQUARE_PAD)
    if c.WEIGHTS:
        load_backbone(backbone, c.WEIGHTS, prefix="net.")
    return backbone
