# In-domain MAE for the CPU transfer benchmark (mae-transfer evaluate --suite cpu): the demo's
# ViT-Ti/8 on the unlabelled training images of the Fashion-MNIST scenes (mae_transfer.data.scenes).
# 64-px crops of the 128-px scenes, scale 0.2-1: objects appear at 0.5-1.1x the size detection and
# segmentation see them at (128 px), for a quarter of the cost of 128-px pretraining.
# A copy of the demo config with other values: the base object is never changed.
from dataclasses import replace

from mae_transfer.configs.pretrain.demo_tiny import cfg as base

cfg = replace(
    base,
    data_path="output/scenes/train",  # python -m mae_transfer.data.scenes output/scenes --train 2000 --val 200
    epochs=100,                       # 2000 images x 100 epochs = 200k crops
    warmup_epochs=5,
    save_freq=10,
    vis_freq=10,
    output_dir="output/pretrain/scenes_tiny",
)
