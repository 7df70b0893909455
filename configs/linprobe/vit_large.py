# ViT-L/16 linear probing: 50 epochs (75.8 % top-1 from 1600-ep pretraining).
from configs.linprobe.vit_base import cfg

cfg.model, cfg.epochs, cfg.output_dir = "vit_large_patch16", 50, "output/linprobe/vit_large"
