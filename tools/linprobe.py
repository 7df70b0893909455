#!/usr/bin/env python
"""Linear probing of an MAE encoder (frozen trunk, BatchNorm + linear head on the cls token, LARS).

  torchrun --nproc_per_node 8 tools/linprobe.py --config configs/linprobe/vit_base.py \\
      --finetune mae_pretrain_vit_base.pth --data-path /data/imagenet
"""
import _cli  # noqa: F401
from finetune import main

if __name__ == "__main__":
    _cli.run_cli(lambda: main("configs/linprobe/vit_base.py", __doc__))
