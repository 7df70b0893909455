# MAE ViT-g/14 (1.0B encoder parameters; MAWS pre-pretrains it with MAE). 16 bytes a parameter of weights,
# gradients and AdamW moments is ~18 GB a process under ddp: strategy=fsdp shards them (1/N each of N GPUs)
# and activation checkpointing keeps batch 64 a GPU within an 80 GB card (bench/fsdp_memory.py).
from dataclasses import replace

from mae_transfer.configs.pretrain.mae_vit_base import cfg as base

cfg = replace(base, model="mae_vit_giant_patch14", strategy="fsdp", grad_checkpointing=True,
              output_dir="output/pretrain/mae_vit_giant")
