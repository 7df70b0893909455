# Fine-tuning of the CPU transfer benchmark (mae-transfer evaluate --suite cpu): ViT-Ti/8 on the
# scene set's object crops at 32 px (see configs/linprobe/scenes_cpu.py). The paper's recipe
# (RandAugment, mixup/cutmix, label smoothing, drop path, layer decay) on a 3-epoch schedule, 64 images
# a step. Layer decay 0.75 (ViT-L's value) rather than B's 0.65: with 0.65 the first block would get
# 0.65^12 = 0.6 % of the head's lr, too little to adapt in 3 epochs.
from dataclasses import replace

from mae_transfer.configs.finetune.vit_base import cfg as base

cfg = replace(base, model="vit_tiny_patch8", img_size=32, num_classes=10, data_path="output/scenes/crops",
              epochs=3, warmup_epochs=1, blr=1e-3, layer_decay=0.75, batch_size=64, effective_batch_size=64,
              num_workers=1, save_freq=1000, output_dir="output/finetune/scenes_cpu")
