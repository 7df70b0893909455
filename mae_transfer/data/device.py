"""pipeline=device: the loader workers only read bytes and draw each sample's crop box and flip (`fast.CropFlip`,
the reference's draws); the batch is decoded on the device when the trainer moves it there
(`torchvision.io.decode_jpeg(..., device="cuda")`: nvJPEG, batched), then cropped, resized (bicubic, antialiased,
as PIL's) and flipped as tensor ops. The same code runs on CPU tensors (tested here).

The one reader's rules hold because the worker decides what goes to the device: only a complete JPEG (its end
marker present) in RGB or grey without an EXIF turn; anything else -- PNG, WebP, EXIF-turned, CMYK, truncated -- is
read by the reference reader in the worker (skipped and counted if unreadable) and travels as a finished crop."""
import io
import logging
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from .fast import Box, CropFlip, _pil_path, plain_jpeg
from .images import load_rgb

_logger = logging.getLogger(__name__)


@dataclass
class EncodedImage:
    """One sample on its way: JPEG bytes and its crop (decoded on the device), or a finished uint8 crop."""
    data: torch.Tensor          # uint8: the JPEG's bytes [B], or the finished crop [3, S, S]
    box: Optional[Box] = None   # None: `data` is finished
    size: int = 224

    @staticmethod
    def collate(items: List["EncodedImage"]) -> "EncodedBatch":
        return EncodedBatch(items)


class EncodedBatch:
    """What the loader hands the trainer; `.to(device)` (the trainer's move of every batch item) decodes it there
    and returns uint8 [N, 3, S, S] (normalised on the device by the recipe, as the fast path's)."""

    def __init__(self, items: List[EncodedImage]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> torch.Tensor:
        return decode_batch(self.items, torch.device(device))


def crop_resize(img: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """uint8 [3, H, W] on any device -> uint8 [3, size, size]: crop, bicubic resize with antialiasing, flip."""
    top, left, h, w, flip = box
    x = img[:, top:top + h, left:left + w].unsqueeze(0).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.round_().clamp_(0, 255).to(torch.uint8)[0]
    return x.flip(-1) if flip else x


def decode_batch(items: List[EncodedImage], device: torch.device) -> torch.Tensor:
    todo = [k for k, it in enumerate(items) if it.box is not None]
    out: List[Optional[torch.Tensor]] = [it.data.to(device) if it.box is None else None for it in items]
    try:  # one batched call: nvJPEG decodes them together on a GPU
        imgs = decode_jpeg([items[k].data for k in todo], mode=ImageReadMode.RGB, device=device) if todo else []
    except RuntimeError:  # one of them is a JPEG the device decoder refuses: each on its own, PIL for the refused
        imgs = [_decode_one(items[k], device) for k in todo]
    for k, img in zip(todo, imgs):
        out[k] = crop_resize(img, items[k].box, items[k].size) if img is not None else None
    lost = [k for k, x in enumerate(out) if x is None]
    if lost:  # corrupt for PIL too, found only now: the batch's first image stands in (the worker counted none)
        _logger.warning("%d images of a batch could not be decoded by any decoder; replaced by another of the batch",
                        len(lost))
        good = next(x for x in out if x is not None) if len(lost) < len(out) else torch.zeros(
            3, items[0].size, items[0].size, dtype=torch.uint8, device=device)
        out = [good if x is None else x for x in out]
    return torch.stack(out)


def _decode_one(item: EncodedImage, device: torch.device) -> Optional[torch.Tensor]:
    try:
        return decode_jpeg(item.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        img = load_rgb(io.BytesIO(item.data.numpy().tobytes()))
        return None if img is None else torch.from_numpy(np.array(img)).permute(2, 0, 1).to(device)


class DeviceCropFlip:
    """The worker's part of pipeline=device: bytes (or a decoded PIL image) -> EncodedImage, or None where the
    reference reader skips the image."""
    wants_bytes = True

    def __init__(self, size: int = 224, scale=(0.2, 1.0)):
        self.crop = CropFlip(size, scale)

    def __call__(self, data: Union[bytes, Image.Image]) -> Optional[EncodedImage]:
        size = self.crop.size
        dims = None if isinstance(data, Image.Image) else plain_jpeg(data)
        if dims is None or min(dims) < 2 or data.rstrip(b"\0")[-2:] != b"\xff\xd9":  # not for the device decoder
            img = data if isinstance(data, Image.Image) else load_rgb(io.BytesIO(data))
            return None if img is None else EncodedImage(_pil_path(img, self.crop.draw(*img.size), size))
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), self.crop.draw(*dims), size)
