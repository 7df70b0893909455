# A ViTDet that trains on 2 CPU cores in minutes: the demo's MAE ViT-Ti/8 (64-px pretraining) on
# 128-px images (the Fashion-MNIST scenes of the demo and of mae-transfer evaluate --suite cpu;
# the number of classes follows --val-json). Same model family as ViT-B; what changes and why:
# patch 8 gives stride 8, so the pyramid is (2, 1, 0.5) + max-pool = strides 4..32 (p2-p5).
from functools import partial

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from mae_transfer.det.checkpoint import max_pool_top_block

from .mask_rcnn_vitdet_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

image_size = 128
net = model.backbone.net
net.img_size, net.patch_size, net.pretrain_img_size = image_size, 8, 64
net.embed_dim, net.depth, net.num_heads, net.drop_path_rate = 192, 12, 3, 0.1
net.window_size = 4  # 16 x 16 patches -> 4 x 4 windows; global attention in blocks 2, 5, 8, 11 as B
model.backbone.scale_factors = (2.0, 1.0, 0.5)
model.backbone.top_block = L(max_pool_top_block)(in_feature="p4")  # max-pooled into p5
model.backbone.square_pad = image_size
model.proposal_generator.in_features = ["p2", "p3", "p4", "p5"]
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128]]
model.proposal_generator.anchor_generator.strides = [4, 8, 16, 32]
model.roi_heads.num_classes = 3
model.roi_heads.box_in_features = model.roi_heads.mask_in_features = ["p2", "p3", "p4", "p5"]
# narrower pyramid and heads (same 4conv1fc + LN structure): the 256-ch heads on 512 RoIs/image
# would cost 10x the ViT-Ti on a CPU
ch = 64
model.backbone.out_channels = model.proposal_generator.head.in_channels = ch
model.roi_heads.box_head.input_shape = ShapeSpec(channels=ch, height=7, width=7)
model.roi_heads.box_head.conv_dims = [ch] * 4
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=ch, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [ch] * 5  # 4 convs + the upsampling deconv
model.roi_heads.batch_size_per_image = 64

dataloader.train.mapper.augmentations[1].target_height = image_size
dataloader.train.mapper.augmentations[1].target_width = image_size
dataloader.train.mapper.augmentations[1].min_scale = 0.5  # tiny images: milder jitter
dataloader.train.mapper.augmentations[2].crop_size = (image_size, image_size)
dataloader.test.mapper.augmentations[0].short_edge_length = image_size
dataloader.test.mapper.augmentations[0].max_size = image_size
# 4 images a step: half the batch costs 0.57x the time of 8 (measured), so a budget buys 1.76x the
# updates, and detection needs ~1k updates to start (150 steps of 8 gave < 1 box AP either way)
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

train.max_iter = 1000  # 1000 x 4 images = 2 epochs of the 2000 scenes
train.amp.enabled = False
train.ddp.fp16_compression = False
train.device = "cpu"
train.eval_period = 0  # evaluate at the end only
train.log_period = 20  # (printed by tools/demo.sh)
train.checkpointer.period = 250
train.output_dir = "output/demo/det"
# at ViTDet-B's fractions of the schedule (163889 and 177546 of 184375: 88.9 % and 96.3 %) -> [889, 963]
lr_multiplier.scheduler.milestones = [round(train.max_iter * m / 184375) for m in (163889, 177546)]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 20 / train.max_iter  # 2 %: ViTDet's 250 of 184375 would be 1 step here
optimizer.lr = 2e-4
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
