# ViTDet Mask R-CNN with an MAE ViT-B/16 (Li et al. 2022; COCO box/mask AP 51.6/45.9).
# Model: detectron2's common/models/mask_rcnn_vitdet.py -- ViT-B, window 14 with global blocks
# [2, 5, 8, 11], relative positions (zero init), SimpleFeaturePyramid (4, 2, 1, 0.5) x 256 ch, LN,
# LastLevelMaxPool, 4conv1fc box head with LN.
from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .coco_loader_lsj import dataloader  # noqa: F401

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # the MAE backbone: `mae-transfer det --backbone X`, or a path here
train.output_dir = "output/det/mask_rcnn_vitdet_b_100ep"

# 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],  # ~ epochs 88.9 and 96.3
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# AdamW lr 1e-4, betas (0.9, 0.999), wd 0.1; no decay on norms and pos_embed; layer decay 0.7
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
