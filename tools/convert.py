#!/usr/bin/env python
"""Convert an MAE checkpoint to what another codebase loads directly.

  python tools/convert.py mae_pretrain_vit_base.pth --to hf out/vit-mae-base     # ViTMAEModel.from_pretrained(dir)
  python tools/convert.py output/pretrain/checkpoint-last.pth --to hf out/mae     # ViTMAEForPreTraining (with decoder)
  python tools/convert.py X.pth --to timm vit_b.pth        # timm.create_model('vit_base_patch16', pretrained=True,
                                                           #   pretrained_cfg_overlay=dict(file='vit_b.pth'))
  python tools/convert.py X.pth --to detectron2 d2.pth     # DetectionCheckpointer(model).load('d2.pth')
  python tools/convert.py mae_pretrain_vit_huge.pth --to detectron2 h.pth --det-patch-size 16   # ViTDet's p14to16
  python tools/convert.py X.pth --to mmseg mm.pth          # init_cfg=dict(type='Pretrained', checkpoint='mm.pth')
  python tools/convert.py X.pth --to safetensors x.safetensors | --to official x.pth

CKPT: an official MAE file, a tools/pretrain.py checkpoint, timm-style weights, an HF directory or
weights file, or .safetensors. Prints what was written, dropped and renamed.
"""
import argparse

import _cli  # noqa: F401


def main():
    from mae_transfer.convert import TARGETS, export

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--to", required=True, choices=TARGETS)
    p.add_argument("out", help="output file (a directory for --to hf)")
    p.add_argument("--det-patch-size", type=int, help="detectron2: resample the patch kernel to this size (ViT-H: 16)")
    p.add_argument("--det-pretrain-img-size", type=int, default=224,
                   help="detectron2: the ViT's pretrain_img_size; the position table is resampled to it")
    a = p.parse_args()
    r = export(a.checkpoint, a.to, a.out, a.det_patch_size, a.det_pretrain_img_size)
    dropped = ", ".join(sorted({k.split(".")[0] for k in r["dropped"]})) or "nothing"
    print(f"wrote {r['tensors']} tensors to {r['written']} ({a.to}); dropped: {dropped}; "
          f"renamed: {len(r['renamed'])} tensors")


if __name__ == "__main__":
    _cli.run_cli(main)
