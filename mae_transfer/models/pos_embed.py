"""Position tables: the MAE 2-D sin-cos table and the exact resampling the official code uses."""
from typing import Sequence, Tuple, Union

import torch
from timm.layers import resample_abs_pos_embed


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: [M] -> [M, dim]; first half sin, second half cos (official MAE layout)."""
    assert dim % 2 == 0
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]  # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1)


def get_2d_sincos_pos_embed(
    dim: int, grid_size: Union[int, Sequence[int]], cls_token: bool = False
) -> torch.Tensor:
    """Fixed 2-D sin-cos table of the MAE paper, float32.

    grid_size: int or (h, w). Returns [h*w, dim], or [1 + h*w, dim] with a zero row for the cls token.
    The first dim/2 channels encode the column (w) coordinate, the last dim/2 the row (h), and
    positions are flattened row-major -- identical to the official numpy code, for any h != w too.
    """
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    assert dim % 4 == 0, "sin-cos 2-D table needs dim divisible by 4"
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # [h, w] each
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)  # [h*w, dim]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: Tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample [1, prefix + h*w, D] to a new (h', w') grid exactly as the official
    `interpolate_pos_embed` does: bicubic, align_corners=False and *no* antialias (timm's default
    antialias gives visibly different features when going down, and differs when going up)."""
    n = pos_embed.shape[1] - num_prefix_tokens
    old = int(round(n**0.5))
    if old * old != n:
        raise ValueError(f"position table with {n} patch tokens is not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, list(new_grid), old_size=[old, old], num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic", antialias=False,
    )
