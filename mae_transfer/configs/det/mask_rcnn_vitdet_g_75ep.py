# ViT-g/14 (width 1408, depth 40, MLP 6144): ViTDet's ViT-H recipe (mask_rcnn_vitdet_h_75ep.py) carried to the
# giant size -- ViTDet publishes no ViT-g config, so this is an extrapolation, not a published recipe: global
# attention in every 10th block (as H's every 8th of 32), lr decay 0.9 over 40 layers, and activation
# checkpointing in every block (1.0B backbone parameters at 1024 px do not fit a GPU's memory without it).
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from .mask_rcnn_vitdet_h_75ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.embed_dim = 1408
model.backbone.net.depth = 40
model.backbone.net.num_heads = 16
model.backbone.net.mlp_ratio = 48 / 11  # 1408 * 48 / 11 = 6144
model.backbone.net.use_act_checkpoint = True
# 9, 19, 29, 39 for global attention
model.backbone.net.window_block_indexes = [i for i in range(40) if i % 10 != 9]

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.9, num_layers=40)
train.output_dir = "output/det/mask_rcnn_vitdet_g_75ep"
