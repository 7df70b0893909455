# ViT-H (COCO box/mask AP 56.7/50.2, 75 epochs): ViTDet's mask_rcnn_vitdet_h_75ep.py value for value.
# The patch-14 MAE kernel is resampled to 16 px on load (mae-transfer det does it, as ViTDet's
# mae_pretrain_vit_huge_p14to16.pth); the 16 x 16 position table of ViT-H/14 at 224 px is resampled
# to the 14 x 14 of pretrain_img_size=224 (left at ViTDet's default, as in its config).
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.embed_dim = 1280
model.backbone.net.depth = 32
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.5
# 7, 15, 23, 31 for global attention
model.backbone.net.window_block_indexes = (
    list(range(0, 7)) + list(range(8, 15)) + list(range(16, 23)) + list(range(24, 31))
)

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.9, num_layers=32)
optimizer.params.overrides = {}           # ViTDet's H: pos_embed decays like any weight,
optimizer.params.weight_decay_norm = None  # and so do norms (the B/L configs exempt both)

# 75 ep = 138281 iters * 64 images/iter / 118000 images/ep
train.max_iter = train.max_iter * 3 // 4
lr_multiplier.scheduler.milestones = [m * 3 // 4 for m in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
# warmup_length stays the B config's 250 / 184375 of the schedule: ViTDet's H config does not update
# it, so its warm-up is 250 / 184375 * 138281 = 187.5 iterations, not 250. Kept as published.
train.output_dir = "output/det/mask_rcnn_vitdet_h_75ep"
