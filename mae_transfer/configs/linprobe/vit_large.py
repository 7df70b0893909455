# ViT-L/16 linear probing: 50 epochs (75.8 % top-1 from 1600-ep pretraining).
from dataclasses import replace

from mae_transfer.configs.linprobe.vit_base import cfg as base

cfg = replace(base, model="vit_large_patch16", epochs=50, output_dir="output/linprobe/vit_large")
