# ViT-H/14 (86.9 % fine-tuned at 224 px, 1600 epochs).
from dataclasses import replace

from mae_transfer.configs.pretrain.mae_vit_base import cfg as base

cfg = replace(base, model="mae_vit_huge_patch14")
