# MAE ViT-2B/14 (MAWS, Singh et al. 2023: width 2560, depth 24, 32 heads; 87.8 % IN-1k fine-tuned).
# ~1.9B parameters: ~31 GB of weights, gradients and AdamW moments under ddp -- FSDP2 shards them.
from dataclasses import replace

from mae_transfer.configs.pretrain.mae_vit_base import cfg as base

cfg = replace(base, model="mae_vit_2b_patch14", strategy="fsdp", grad_checkpointing=True,
              output_dir="output/pretrain/mae_vit_2b")
