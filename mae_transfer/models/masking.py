"""Masking strategies of the MAE paper (Fig. 6 / Table 1f), all expressed as *noise*.

Every strategy produces a noise tensor [N, L]; `random_masking` then keeps the `L * (1 - ratio)`
patches with the smallest noise (the official semantics, also HF's `noise=` argument). So a mask is
reproducible from its noise alone, and every strategy keeps exactly the same number of patches.
"""
import math
from typing import Optional, Tuple

import torch

STRATEGIES = ("random", "block", "grid")


def num_keep(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1 - mask_ratio))  # official rounding (floor)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [N, L, D] -> (x_visible [N, len_keep, D], mask [N, L] (1 = removed), ids_restore [N, L])."""
    N, L, D = x.shape
    len_keep = num_keep(L, mask_ratio)
    if noise is None:
        noise = torch.rand(N, L, device=x.device)
    elif noise.shape != (N, L):
        raise ValueError(f"noise must have shape {(N, L)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = (ids_restore >= len_keep).to(x.dtype)  # same as official ones/zeros + unshuffle
    return x_visible, mask, ids_restore


def grid_noise(n: int, grid: Tuple[int, int], mask_ratio: float, device=None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Regular grid: keep one patch of every s x s cell (s = 2 for 75 %), paper Fig. 6 right."""
    h, w = grid
    s = max(1, round(math.sqrt(1.0 / max(1e-6, 1.0 - mask_ratio))))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masked = ((rows % s != 0) | (cols % s != 0)).float().reshape(1, h * w)
    # ties broken randomly but never across the kept/masked boundary
    return (masked + 0.5 * torch.rand(n, h * w, generator=generator)).to(device)


def block_noise(
    n: int, grid: Tuple[int, int], mask_ratio: float, device=None, min_patches: int = 16,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """BEiT-style block-wise masking: random rectangles (aspect 0.3..1/0.3, >= `min_patches`
    patches) are removed until `mask_ratio` of the patches is covered (paper Fig. 6 middle)."""
    h, w = grid
    L = h * w
    target = L - num_keep(L, mask_ratio)
    out = torch.empty(n, L)
    rnd = lambda: torch.rand((), generator=generator).item()  # noqa: E731
    for i in range(n):
        m = torch.zeros(h, w)
        for _ in range(100 * L):  # bounded; every round covers >= 1 new patch with high probability
            covered = int(m.sum())
            if covered >= target:
                break
            area = min_patches + rnd() * max(0, target - covered - min_patches)
            aspect = math.exp(math.log(0.3) + rnd() * (math.log(1 / 0.3) - math.log(0.3)))
            bh = min(h, max(1, int(round(math.sqrt(area * aspect)))))
            bw = min(w, max(1, int(round(math.sqrt(area / aspect)))))
            top, left = int(rnd() * (h - bh + 1)), int(rnd() * (w - bw + 1))
            m[top:top + bh, left:left + bw] = 1
        out[i] = m.reshape(-1)
    # masked patches get noise in [1, 1.5): a block larger than needed is trimmed randomly
    return (out + 0.5 * torch.rand(n, L, generator=generator)).to(device)


def make_noise(strategy: str, n: int, grid: Tuple[int, int], mask_ratio: float, device=None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Noise [N, L] of `strategy`, drawn from `generator` (a run's own; None: torch's global one)."""
    if strategy == "random":
        return torch.rand(n, grid[0] * grid[1], generator=generator).to(device)
    if strategy == "grid":
        return grid_noise(n, grid, mask_ratio, device, generator=generator)
    if strategy == "block":
        return block_noise(n, grid, mask_ratio, device, generator=generator)
    raise ValueError(f"unknown masking strategy {strategy!r}; choose one of {STRATEGIES}")
