# ViT-L/16: the paper's main model (85.9 % fine-tuned after 1600 epochs; 800 is the default schedule).
from dataclasses import replace

from mae_transfer.configs.pretrain.mae_vit_base import cfg as base

cfg = replace(base, model="mae_vit_large_patch16")
