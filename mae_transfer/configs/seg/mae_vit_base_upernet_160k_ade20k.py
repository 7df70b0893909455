# UperNet on ADE20K with an MAE ViT-B/16: MAE paper Table 5, 48.1 mIoU; mmseg's own MAE config
# (configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py) reproduces 48.13. Everything is in
# this one file (mmseg's version spreads it over five); values are mmseg's unless noted.
# The backbone checkpoint comes from mae-transfer seg --backbone (any MAE format).
custom_imports = dict(imports=["mae_transfer.seg"], allow_failed_imports=False)
default_scope = "mmseg"

crop_size = (512, 512)
num_classes = 150
norm_cfg = dict(type="SyncBN", requires_grad=True)  # mae-transfer seg uses BN on a CPU
data_preprocessor = dict(
    type="SegDataPreProcessor", size=crop_size, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="MAEViT",  # mmseg's MAE (relative position bias, zero init) + any-format checkpoint loading
        checkpoint=None,
        img_size=crop_size, patch_size=16, in_channels=3, embed_dims=768, num_layers=12, num_heads=12,
        mlp_ratio=4, out_indices=[3, 5, 7, 11], attn_drop_rate=0.0, drop_path_rate=0.1,
        norm_cfg=dict(type="LN", eps=1e-6), act_cfg=dict(type="GELU"), norm_eval=False,
        init_values=1.0),  # layer scale starts at 1: exactly the MAE block
    neck=dict(type="Feature2Pyramid", embed_dim=768, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type="UPerHead", in_channels=[768, 768, 768, 768], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
        channels=768, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type="FCNHead", in_channels=768, in_index=2, channels=256, num_convs=1, concat_input=False,
        dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # the MAE's position table is fixed to 512 x 512 crops, hence sliding-window inference
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)))

# ---- data: ADE20K (ADEChallengeData2016), labels 1..150, 0 = "other" -> ignored (reduce_zero_label)
dataset_type = "ADE20KDataset"
data_root = "data/ade/ADEChallengeData2016"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # multi-scale + flip evaluation (--aug-test)
tta_model = dict(type="SegTTAModel")
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]]),
]
train_dataloader = dict(
    batch_size=2,  # x 8 GPUs = 16
    num_workers=4, persistent_workers=True, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path="images/training", seg_map_path="annotations/training")))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation")))
test_dataloader = val_dataloader
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU", "mFscore"])  # mIoU, mAcc, aAcc + per class
test_evaluator = val_evaluator

# ---- schedule: AdamW 1e-4, layer decay 0.65, 1500 warm-up iterations then poly, 160k iterations
optim_wrapper = dict(
    type="AmpOptimWrapper", dtype="bfloat16",  # mae-transfer seg: plain OptimWrapper on a CPU
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.65),
    constructor="LayerDecayOptimizerConstructor")
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# ---- runtime
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"))
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
work_dir = "output/seg/mae_vit_base_upernet_160k_ade20k"
