# Fine-tuning of the CPU transfer benchmark (tools/evaluate_backbone.py --suite cpu): ViT-Ti/8 on the
# scene set's Fashion-MNIST items at 32 px (see configs/linprobe/scenes_cpu.py). The paper's recipe
# (RandAugment, mixup/cutmix, label smoothing, drop path, layer decay) on a 5-epoch schedule; layer
# decay 0.75 as the paper's ViT-L (24 blocks; B's 0.65 would all but freeze 12 thin blocks this short),
# 64 images a step.
from dataclasses import replace

from configs.finetune.vit_base import cfg as base

cfg = replace(base, model="vit_tiny_patch8", img_size=32, num_classes=10, data_path="output/scenes/items",
              epochs=5, warmup_epochs=1, blr=1e-3, layer_decay=0.75, batch_size=64, effective_batch_size=64,
              num_workers=1, save_freq=1000, output_dir="output/finetune/scenes_cpu")
