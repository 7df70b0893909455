# ViT-H/14 linear probing: 50 epochs.
from dataclasses import replace

from mae_transfer.configs.linprobe.vit_base import cfg as base

cfg = replace(base, model="vit_huge_patch14", epochs=50, output_dir="output/linprobe/vit_huge")
