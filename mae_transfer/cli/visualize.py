"""`mae-transfer visualize`: the reconstruction grid of a full MAE checkpoint."""
import os
from typing import List

import torch
from torchvision import transforms

from .. import outputs
from ..data import pretrain_transform
from ..data.images import find_images, load_rgb
from ..engine.config import seed_arg
from ..errors import ConfigError, DataError
from ..models.mae import load_mae
from ..models.masking import make_noise
from ..visualize import NORM_PIX_NOTE, reconstruct, save_grid
from .common import Parser, number

VISUALIZE_DOC = """Reconstruction grid for any full MAE checkpoint (official *_full.pth / mae_visualize_*.pth,
pretraining checkpoints, HF ViTMAE, safetensors); the model is rebuilt from the architecture the
checkpoint records (or, for foreign files, the table of known sizes).

  mae-transfer visualize --checkpoint output/demo/pretrain/checkpoint-last.pth --images photos/ -o grid.png
"""


def main(argv: List[str], prog: str = "mae-transfer visualize"):
    p = Parser(prog, VISUALIZE_DOC)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--max-images", type=number(1, 1000, int), default=6)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("-o", "--output", default="reconstructions.png")
    a = p.parse_args(argv)
    if not 0 < a.mask_ratio < 1:
        raise ConfigError(f"--mask-ratio {a.mask_ratio}: must be inside (0, 1)")
    if not a.output.lower().endswith(".png"):
        raise ConfigError(f"-o {a.output}: the grid is a PNG file (name it *.png)")
    outputs.refuse_inputs([a.output], [a.checkpoint, *a.images])
    outputs.check_new(a.output, "grid")  # early; the grid is then published only where nothing is
    missing = [src for src in a.images if not os.path.exists(src)]
    if missing:
        raise DataError(f"--images {missing[0]}: no such file or folder")
    model = load_mae(a.checkpoint)
    files = [f for src in a.images for f in (find_images(src) if os.path.isdir(src) else [src])]
    size = model.grid_size[0] * model.patch_size
    tf = pretrain_transform(size, scale=(1.0, 1.0))
    tf.transforms = [transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                     transforms.CenterCrop(size)] + tf.transforms[2:]  # no random crop / flip here
    imgs = [tf(im) for im in (load_rgb(f) for f in files[: a.max_images]) if im is not None]
    if not imgs:
        raise DataError(f"none of the given images could be read, e.g. {files[0]}")
    batch = torch.stack(imgs)
    # which patches are hidden: drawn from the run's own generator (the process's global one is left alone)
    noise = make_noise(model.mask_strategy, batch.shape[0], model.grid_size, a.mask_ratio,
                       generator=torch.Generator().manual_seed(a.seed))
    grid = reconstruct(model, batch, a.mask_ratio, noise)
    out = save_grid(grid, a.output, f"{a.checkpoint}, mask ratio {a.mask_ratio}" + NORM_PIX_NOTE * model.norm_pix_loss,
                    replace=False)
    print(f"reconstructions: {out}")
