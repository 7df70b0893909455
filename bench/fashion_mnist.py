#!/usr/bin/env python
"""Does MAE pretraining help? Fashion-MNIST, 2 CPU cores, about 45 minutes end to end.

  apt-get install dataset-fashion-mnist      # 60k train / 10k test, 28x28 grey (MIT), no download at run time
  .venv/bin/python bench/fashion_mnist.py [--quick]

Pretrains a small MAE on the 60k training images *without labels* (mae-transfer pretrain's engine), then
compares it with the same ViT from random init, same budget: linear probe (frozen trunk), fine-tuning
with 1 % and with 100 % of the labels (tools/finetune.py's engine), all on the 10k test images.
Grey images are replicated to RGB. Prints one table; --quick is a 3-minute smoke run.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mae_transfer.data import SeededSamples  # noqa: E402
from mae_transfer.data.scenes import fashion_mnist  # noqa: E402
from mae_transfer.engine import finetune, pretrain  # noqa: E402

ROOT = Path("/usr/share/datasets/fashion-mnist")
# ViT with 7-px patches (4 x 4 tokens), 192-d, 6 blocks; decoder 128-d, 2 blocks: sized for 2 CPU cores.
ENC = dict(patch_size=7, embed_dim=192, depth=6, num_heads=3)
DEC = dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)


class Arrays(torch.utils.data.Dataset):
    """(PIL RGB image[, label]) from uint8 arrays."""

    def __init__(self, x, y=None):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = Image.fromarray(self.x[i]).convert("RGB")
        return img if self.y is None else (img, int(self.y[i]))


def run(args):
    if not ROOT.is_dir():
        sys.exit(f"error: {ROOT} not found; install Debian's dataset-fashion-mnist")
    (xtr, ytr), (xte, yte) = fashion_mnist("train", ROOT), fashion_mnist("test", ROOT)
    if args.quick:
        xtr, ytr, xte, yte = xtr[:3000], ytr[:3000], xte[:1000], yte[:1000]
    out = Path(args.output_dir)
    rng = np.random.default_rng(0)
    per_class = max(10, len(ytr) // 1000)  # 1 % of the labels: 60 per class (10 in --quick)
    one_pct = np.concatenate([rng.choice(np.flatnonzero(ytr == c), per_class, replace=False) for c in range(10)])
    times, rows = {}, {}

    t = time.time()
    pcfg = pretrain.PretrainConfig(
        model="mae_vit_small_patch4", model_kwargs={**ENC, **DEC}, img_size=28, crop_scale=(0.5, 1.0),
        epochs=args.pretrain_epochs, warmup_epochs=1, blr=1.5e-3, batch_size=256, effective_batch_size=256,
        num_workers=1, output_dir=str(out / "pretrain"), vis_freq=max(1, args.pretrain_epochs), save_freq=1000)
    pretrain.train(pcfg, source=Arrays(xtr))
    times["pretrain"] = time.time() - t
    ckpt = str(out / "pretrain" / "checkpoint-last.pth")

    def classify_run(name, init, mode, idx_train, epochs, **kw):
        cfg = finetune.ClassifyConfig(
            mode=mode, model="vit_small_patch4", model_kwargs=ENC, img_size=28, num_classes=10, finetune=init,
            epochs=epochs, num_workers=1, output_dir=str(out / name), resume="none", save_freq=1000, **kw)
        train_tf, eval_tf = finetune.build_transforms(cfg)
        sets = (SeededSamples(Arrays(xtr[idx_train], ytr[idx_train]), train_tf),
                SeededSamples(Arrays(xte, yte), eval_tf, replace_bad=False))
        t0 = time.time()
        acc = finetune.train(cfg, datasets=sets)["acc1"]
        times[name] = time.time() - t0
        return acc

    everything = np.arange(len(ytr))
    lin = dict(global_pool=False, blr=0.1, weight_decay=0.0, warmup_epochs=1, min_lr=0.0, batch_size=256,
               effective_batch_size=256, head_init_std=0.01, drop_path=0.0)
    # fine-tuning: the official recipe at 28 px (RandAugment, mixup/cutmix, layer decay), short schedules
    ft = dict(batch_size=64, effective_batch_size=64, blr=1e-3, warmup_epochs=1, layer_decay=0.75, drop_path=0.1)
    for init, tag in ((ckpt, "MAE"), (None, "scratch")):
        rows.setdefault("linear probe (100 % labels)", {})[tag] = classify_run(
            f"linprobe_{tag}", init, "linprobe", everything, args.probe_epochs, **lin)
        rows.setdefault("fine-tune, 1 % labels", {})[tag] = classify_run(
            f"ft1_{tag}", init, "finetune", one_pct, args.ft1_epochs, eval_freq=args.ft1_epochs,
            **{**ft, "batch_size": 32, "effective_batch_size": 32})
        rows.setdefault("fine-tune, 100 % labels", {})[tag] = classify_run(
            f"ft100_{tag}", init, "finetune", everything, args.ft100_epochs, **ft)

    print(f"\nFashion-MNIST test accuracy (top-1 %, {len(yte)} images); ViT {ENC}, MAE decoder {DEC}")
    print(f"MAE pretraining: {args.pretrain_epochs} epochs on {len(xtr)} unlabelled images, "
          f"{times['pretrain'] / 60:.1f} min")
    print(f"| {'task':<28} | {'MAE-pretrained':>14} | {'from scratch':>12} | {'time MAE / scratch (min)':>25} |")
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 14}|{'-' * 27}|")
    keys = {"linear probe (100 % labels)": "linprobe", "fine-tune, 1 % labels": "ft1",
            "fine-tune, 100 % labels": "ft100"}
    for task, r in rows.items():
        k = keys[task]
        tm = f"{times[k + '_MAE'] / 60:.1f} / {times[k + '_scratch'] / 60:.1f}"
        print(f"| {task:<28} | {r['MAE']:>14.2f} | {r['scratch']:>12.2f} | {tm:>25} |")
    print(f"total wall time: {sum(times.values()) / 60:.1f} min")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--probe-epochs", type=int, default=5)
    p.add_argument("--ft1-epochs", type=int, default=40)
    p.add_argument("--ft100-epochs", type=int, default=2)
    p.add_argument("--output-dir", default="output/bench/fashion_mnist")
    p.add_argument("--quick", action="store_true", help="3k/1k images, 1 epoch each: a smoke run")
    a = p.parse_args()
    if a.quick:
        a.pretrain_epochs, a.probe_epochs, a.ft1_epochs, a.ft100_epochs = 1, 1, 2, 1
        a.output_dir += "_quick"
    run(a)
