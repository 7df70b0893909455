"""Reconstruction grids: original | masked | reconstruction | reconstruction + visible patches."""
from pathlib import Path
from typing import Optional

import torch

from . import outputs
from .data import IMAGENET_MEAN, IMAGENET_STD
from .models.mae import MaskedAutoencoderViT

NORM_PIX_NOTE = "\n(norm_pix_loss: predicted patches shown with their true mean and std)"


@torch.no_grad()
def reconstruct(model: MaskedAutoencoderViT, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: Optional[torch.Tensor] = None):
    """imgs: normalised [N, 3, H, W] -> dict of [N, 3, H, W] images in [0, 1].

    With `norm_pix_loss` the model predicts per-patch normalised pixels; they are mapped back with
    each patch's own mean/std from the original image (as the paper's figures do)."""
    model.eval()
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)  # pred: [N, L, p*p*3]
    if model.norm_pix_loss:
        target = model.patchify(imgs)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    grid = model._grid(imgs)
    rec = model.unpatchify(pred, grid)
    m = model.unpatchify(mask[..., None].expand(-1, -1, pred.shape[-1]), grid)  # 1 = removed
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    show = lambda x: (x.float().cpu() * std + mean).clamp(0, 1)  # noqa: E731
    orig, rec, m = show(imgs), show(rec), m.float().cpu()
    return {"original": orig, "masked": orig * (1 - m) + 0.5 * m, "reconstruction": rec,
            "reconstruction + visible": orig * (1 - m) + rec * m}


def save_grid(images: dict, path, title: str = "", replace: bool = True) -> Path:
    """The grid as a PNG at `path` (a run's picture is replaced each time; `replace=False`: a command's one
    output, published only where nothing is)."""
    import matplotlib  # 0.45 s of import (measured), only when a grid is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(images)
    n = images[cols[0]].shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n + 0.4), squeeze=False)
    for r in range(n):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(images[name][r].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = outputs.write_with(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), replace)
    plt.close(fig)
    return path
