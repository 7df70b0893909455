"""`mae-transfer convert`: an MAE checkpoint in the form another codebase loads directly."""
from typing import List

from ..convert import TARGETS, convert_checkpoint
from .common import Parser, number

CONVERT_DOC = """Convert an MAE checkpoint to what another codebase loads directly.

  mae-transfer convert mae_pretrain_vit_base.pth --to hf out/vit-mae-base   # ViTMAEModel.from_pretrained(dir)
  mae-transfer convert output/pretrain/checkpoint-last.pth --to hf out/mae  # ViTMAEForPreTraining (with decoder)
  mae-transfer convert X.pth --to timm vit_b.pth        # timm.create_model('vit_base_patch16', pretrained=True,
                                                        #   pretrained_cfg_overlay=dict(file='vit_b.pth'))
  mae-transfer convert X.pth --to detectron2 d2.pth     # DetectionCheckpointer(model).load('d2.pth')
  mae-transfer convert mae_pretrain_vit_huge.pth --to detectron2 h.pth --det-patch-size 16   # ViTDet's p14to16
  mae-transfer convert X.pth --to mmseg mm.pth          # init_cfg=dict(type='Pretrained', checkpoint='mm.pth')
  mae-transfer convert X.pth --to safetensors x.safetensors  # the official names, flat, the architecture in its header
  mae-transfer convert X.safetensors --to official x.pth    # back: {'model': ...}, as the official MAE files

CKPT: an official MAE file, a pretraining checkpoint, timm-style weights, an HF directory or weights
file, .safetensors, or any file this command wrote. Prints what was written, dropped and renamed.
"""


def main(argv: List[str], prog: str = "mae-transfer convert"):
    p = Parser(prog, CONVERT_DOC)
    p.add_argument("checkpoint")
    p.add_argument("--to", required=True, choices=TARGETS)
    p.add_argument("out", help="output file (a directory for --to hf)")
    p.add_argument("--det-patch-size", type=number(1, 256, int),
                   help="detectron2: resample the patch kernel to this size (ViT-H: 16)")
    p.add_argument("--det-pretrain-img-size", type=number(16, 8192, int), default=224,
                   help="detectron2: the ViT's pretrain_img_size; the position table is resampled to it")
    a = p.parse_args(argv)
    r = convert_checkpoint(a.checkpoint, a.to, a.out, a.det_patch_size, a.det_pretrain_img_size)
    dropped = ", ".join(sorted({k.split(".")[0] for k in r["dropped"]})) or "nothing"
    adapted = f"; adapted: {'; '.join(r['adapted'])}" if r.get("adapted") else ""
    print(f"wrote {r['tensors']} tensors to {r['written']} ({a.to}); dropped: {dropped}; "
          f"renamed: {len(r['renamed'])} tensors{adapted}")
