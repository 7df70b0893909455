# ViT-H/14 linear probing: 50 epochs.
from configs.linprobe.vit_base import cfg

cfg.model, cfg.epochs, cfg.output_dir = "vit_huge_patch14", 50, "output/linprobe/vit_huge"
