# Linear probe of the CPU transfer benchmark (tools/evaluate_backbone.py --suite cpu): the Fashion-MNIST
# items of the scene set (mae_transfer.data.scenes: items/{train,val}/<class>, 4000 / 1000 images) at
# 32 px for ViT-Ti/8 (4 x 4 tokens; the 8 x 8 table of 64-px pretraining is resampled). 32 rather than
# 64 px: a quarter of the cost, and the items are 28 px. The paper's probe (BatchNorm + linear on the cls
# token, LARS, blr 0.1, no weight decay), with 256 images a step, 5 epochs.
from dataclasses import replace

from configs.linprobe.vit_base import cfg as base

cfg = replace(base, model="vit_tiny_patch8", img_size=32, num_classes=10, data_path="output/scenes/items",
              epochs=5, warmup_epochs=1, batch_size=256, effective_batch_size=256, num_workers=1, save_freq=1000,
              output_dir="output/linprobe/scenes_cpu")
