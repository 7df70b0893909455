# ViT-g/14: ViT-H's published recipe (50 epochs, blr 1e-3, layer decay 0.75, drop path 0.3) carried to the giant
# size -- the MAE paper fine-tunes no ViT-g, so these values are an extrapolation. 1.0B parameters: FSDP2 shards
# weights, gradients and AdamW moments over the processes, and activation checkpointing keeps batch 32 a GPU.
from dataclasses import replace

from mae_transfer.configs.finetune.vit_huge import cfg as base

cfg = replace(base, model="vit_giant_patch14", strategy="fsdp", grad_checkpointing=True,
              output_dir="output/finetune/vit_giant")
