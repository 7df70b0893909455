#!/usr/bin/env python
"""MAE pretraining.

  python tools/pretrain.py                                    # the CPU demo on embedded photos
  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/pretrain/mae_vit_large.py \\
      --data-path /datasets/imagenet/train epochs=1600
Any config field can be overridden as key=value. Resumes from <output_dir>/checkpoint-last.pth.
"""
import argparse
from pathlib import Path

import _cli  # noqa: F401  (repo root on sys.path)


def main():
    from mae_transfer.engine.config import apply_overrides, load_config
    from mae_transfer.engine.pretrain import PretrainConfig, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="a configs/pretrain/*.py file (default: the tiny CPU demo "
                   "without --data-path, ViT-L with it)")
    p.add_argument("--data-path", default=None, help="ImageFolder tree, flat folder of images, a .tar or a "
                   "folder of .tar shards")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--resume", default=None, help="auto (default) | none | path to a checkpoint")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    a = p.parse_intermixed_args()
    default = "configs/pretrain/demo_tiny.py" if a.data_path is None else "configs/pretrain/mae_vit_large.py"
    cfg = load_config(a.config or _cli.ROOT / default, PretrainConfig)
    extra = [f"{k}={v}" for k, v in (("data_path", a.data_path), ("output_dir", a.output_dir),
                                      ("resume", a.resume)) if v is not None]
    cfg = apply_overrides(cfg, extra + a.overrides)
    train(cfg)
    out = Path(cfg.output_dir)
    print(f"checkpoint: {out / 'checkpoint-last.pth'}\nloss curve: {out / 'loss_curve.png'}\n"
          f"reconstructions: {out / 'reconstructions.png'}\n"
          f"logs: {out / 'log.txt'} (JSON lines), tensorboard --logdir {out / 'tensorboard'}")


if __name__ == "__main__":
    _cli.run_cli(main)
