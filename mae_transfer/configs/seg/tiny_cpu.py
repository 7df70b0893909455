# UperNet on 2 CPU cores in minutes: the demo's MAE ViT-Ti/8 on 128-px crops. Its own dataset is an
# ADE20K-layout set of 3 classes (mae_transfer.data.synthetic, the tests); the demo and
# mae-transfer evaluate pass the Fashion-MNIST scenes by path (--classes: background + 10 items).
# Same structure as ViT-B.
_base_ = ["./mae_vit_base_upernet_160k_ade20k.py"]

crop_size = (128, 128)
num_classes = 3
norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, patch_size=8, embed_dims=192, num_layers=12, num_heads=3),
    neck=dict(embed_dim=192, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[192] * 4, channels=128, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(85, 85)))

dataset_type = "BaseSegDataset"
classes = ("circle", "square", "triangle")
data_root = "output/demo/ade_shapes"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(256, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 128), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
shapes = dict(type=dataset_type, data_root=data_root, metainfo=dict(classes=classes), img_suffix=".jpg",
             seg_map_suffix=".png", reduce_zero_label=True)
train_dataloader = dict(batch_size=8, num_workers=1, persistent_workers=False,
                        dataset=dict(shapes, pipeline=train_pipeline))
val_dataloader = dict(num_workers=1, persistent_workers=False, dataset=dict(shapes, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(type="OptimWrapper", _delete_=True,
                     optimizer=dict(type="AdamW", lr=3e-4, betas=(0.9, 0.999), weight_decay=0.05),
                     paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65),
                     constructor="LayerDecayOptimizerConstructor")
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=15),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=15, end=150, by_epoch=False),
]
train_cfg = dict(max_iters=150, val_interval=150)  # ~3 min on 2 cores: 3 seeds x 2 backbones fit the suite
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=50))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
work_dir = "output/demo/seg"
