#!/usr/bin/env python
"""ImageNet fine-tuning (and partial fine-tuning) of an MAE encoder.

  torchrun --nproc_per_node 8 tools/finetune.py --config configs/finetune/vit_large.py \\
      --finetune mae_pretrain_vit_large.pth --data-path /data/imagenet          # {train,val}/<class>/*
  python tools/finetune.py --config ... --finetune X.pth --finetune-last-k 4    # paper Fig. 9
  python tools/finetune.py --config ... --eval output/finetune/vit_large/checkpoint-last.pth
  python tools/finetune.py --config ... --img-size 384 --finetune X.pth         # position table resampled
"""
import argparse

import _cli  # noqa: F401

DEFAULT = "configs/finetune/vit_base.py"


def main(default=DEFAULT, doc=__doc__):
    from mae_transfer.engine.classify import ClassifyConfig, train
    from mae_transfer.engine.config import apply_overrides, load_config

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(_cli.ROOT / default))
    p.add_argument("--finetune", help="pretrained checkpoint (any MAE format)")
    p.add_argument("--data-path")
    p.add_argument("--output-dir")
    p.add_argument("--resume", help="auto (default) | none | path")
    p.add_argument("--eval", dest="eval_only", metavar="CKPT", help="evaluate a fine-tuned checkpoint (top-1/top-5)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--finetune-last-k", type=int, help="train only the last K blocks and the head")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    a = p.parse_intermixed_args()
    cfg = load_config(a.config, ClassifyConfig)
    flags = {k: getattr(a, k) for k in ("finetune", "data_path", "output_dir", "resume", "eval_only", "img_size",
                                        "finetune_last_k")}
    cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in flags.items() if v is not None] + a.overrides)
    stats = train(cfg)
    print(f"top-1 {stats.get('acc1', float('nan')):.2f}  top-5 {stats.get('acc5', float('nan')):.2f}  "
          f"(output: {cfg.output_dir})")


if __name__ == "__main__":
    _cli.run_cli(main)
