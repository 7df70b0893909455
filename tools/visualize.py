#!/usr/bin/env python
"""Reconstruction grid for any full MAE checkpoint (official *_full.pth / mae_visualize_*.pth,
tools/pretrain.py, HF ViTMAE, safetensors).

  python tools/visualize.py --checkpoint output/demo/pretrain/checkpoint-last.pth --images photos/ -o grid.png
"""
import argparse

import _cli  # noqa: F401


def main():
    import torch
    from torchvision import transforms

    from mae_transfer import checkpoints
    from mae_transfer.data import DataError, pretrain_transform
    from mae_transfer.data.images import find_images, load_rgb
    from mae_transfer.models.mae import mae_from_state_dict
    from mae_transfer.visualize import NORM_PIX_NOTE, reconstruct, save_grid

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="reconstructions.png")
    a = p.parse_args()

    obj = checkpoints.load_file(a.checkpoint)
    args = obj.get("args") if isinstance(obj, dict) else None
    args = vars(args) if hasattr(args, "__dict__") else (args or {})
    try:
        model = mae_from_state_dict(checkpoints.read_state_dict(obj), args)
    except ValueError as e:
        raise checkpoints.CheckpointError(f"{a.checkpoint}: {e}") from None
    model.load_state_dict(checkpoints.read_state_dict(obj), strict=True)
    files = [f for src in a.images for f in (find_images(src) if __import__("os").path.isdir(src) else [src])]
    size = model.grid_size[0] * model.patch_size
    tf = pretrain_transform(size, scale=(1.0, 1.0))
    tf.transforms = [transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                     transforms.CenterCrop(size)] + tf.transforms[2:]  # no random crop / flip here
    imgs = [tf(im) for im in (load_rgb(f) for f in files[: a.max_images]) if im is not None]
    if not imgs:
        raise DataError("none of the given images could be read")
    torch.manual_seed(a.seed)
    grid = reconstruct(model, torch.stack(imgs), a.mask_ratio)
    out = save_grid(grid, a.output, f"{a.checkpoint}, mask ratio {a.mask_ratio}" + NORM_PIX_NOTE * model.norm_pix_loss)
    print(f"reconstructions: {out}")


if __name__ == "__main__":
    _cli.run_cli(main)
