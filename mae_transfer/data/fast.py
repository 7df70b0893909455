"""The paper's pretraining augmentation (RandomResizedCrop, scale 0.2-1, bicubic; horizontal flip) without the
reference pipeline's waste: decode, crop and resize in as few passes as possible, handed over as uint8 and
normalised on the device (as timm's PrefetchLoader does).

    pipeline=torchvision   the reference: PIL decode, torchvision crop + resize (PIL bicubic, antialiased), flip,
                           ToTensor, Normalize -- float32 batches
    pipeline=fast          (default) the same crop box and flip, drawn from the sample's generator exactly as
                           torchvision draws them (`CropFlip`); JPEGs decoded by libjpeg-turbo (simplejpeg) at
                           1/2, 1/4 or 1/8 size where the crop stays at least twice the output (DCT scaling:
                           an antialiased reduction for free), cropped and resized in one call (torch's uint8
                           bicubic with antialiasing), flipped -- uint8 batches
    fine-tuning (pipeline=fast, `FastThen`): the same decode, crop and resize with timm's crop box (`TimmCropFlip`),
                           then the reference's remaining steps unchanged (RandAugment, ToTensor, Normalize,
                           RandomErasing); linear probing: `FastCropFlip` at scale 0.08-1
    pipeline=device        JPEG bytes to the device, decoded there in batches (torchvision.io.decode_jpeg, nvJPEG
                           on a GPU), cropped, resized (bicubic, antialiased) and flipped as tensor ops (`device.py`)

Every path follows the one reader's rules (`images.load_rgb`): a file the fast decoder would read differently --
not a JPEG, EXIF-turned, CMYK or another mode, truncated -- goes through `load_rgb` itself, so EXIF orientation,
mode conversion and the skipping of truncated files are the reference's decisions by construction.
bench/data_speed.py measures each path (images/s per core, PSNR against the reference on the same crops).
"""
import io
import random
from typing import Callable, Optional, Tuple, Type, Union

import numpy as np
import simplejpeg
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms

from .images import EXIF_ORIENTATION, IMAGENET_MEAN, IMAGENET_STD, load_rgb

Box = Tuple[int, int, int, int, bool]  # top, left, height, width (upright pixels), flip


class CropFlip:
    """The reference's random draws as parameters: torchvision's `RandomResizedCrop.get_params` box, then
    `RandomHorizontalFlip`'s `torch.rand(1) < 0.5`, in that order, from torch's generator (seeded per sample)."""

    def __init__(self, size: int = 224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, list(scale), list(ratio)

    def draw(self, width: int, height: int) -> Box:
        shape = torch.empty(1, 1, 1).expand(1, height, width)  # an image's dimensions, nothing allocated
        top, left, h, w = transforms.RandomResizedCrop.get_params(shape, self.scale, self.ratio)
        return top, left, h, w, bool(torch.rand(1) < 0.5)


class TimmCropFlip(CropFlip):
    """Fine-tuning's random draws as parameters: timm's `RandomResizedCropAndInterpolation.get_params` box (from
    Python's `random`), then torchvision's flip, in the order timm's `create_transform(is_training=True)` draws."""

    def draw(self, width: int, height: int) -> Box:
        shape = torch.empty(1, 1, 1).expand(1, height, width)
        top, left, h, w = RandomResizedCropAndInterpolation.get_params(shape, self.scale, self.ratio)
        return top, left, h, w, bool(torch.rand(1) < 0.5)


def plain_jpeg(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of a JPEG that libjpeg-turbo decodes to the pixels `load_rgb` gives (RGB or grey, no EXIF
    turn); None for anything else (the reference reader handles it)."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or im.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
            return im.size
    except Exception:  # noqa: BLE001  not an image PIL knows: the reference reader decides (and skips it)
        return None


def _resize(arr: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    """HWC uint8 crop -> CHW uint8 [3, size, size]: torch's bicubic with antialiasing (PIL's filter when
    shrinking) on the uint8 pixels as they lie (channels last: torch's vectorised uint8 kernel, ~2x OpenCV's
    INTER_AREA at non-integer ratios and ~3.5x PIL's resize, measured in bench/data_speed.py's probe)."""
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # [1, 3, h, w], channels-last strides: no copy
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)[0]
    return x.flip(-1) if flip else x


def _pil_path(img: Image.Image, box: Box, size: int) -> torch.Tensor:
    top, left, h, w, flip = box
    return _resize(np.array(img)[top:top + h, left:left + w], size, flip)  # a writable copy, as torch wants


class FastCropFlip:
    """pipeline=fast: bytes (or an already decoded PIL image, e.g. the demo photos) -> uint8 [3, size, size], or
    None where the reference reader would skip the image. Draws `CropFlip`'s parameters."""
    wants_bytes = True

    def __init__(self, size: int = 224, scale=(0.2, 1.0), draws: Type[CropFlip] = CropFlip):
        self.crop = draws(size, scale)

    def __call__(self, data: Union[bytes, Image.Image]) -> Optional[torch.Tensor]:
        size = self.crop.size
        if isinstance(data, Image.Image):
            return _pil_path(data, self.crop.draw(*data.size), size)
        dims = plain_jpeg(data)
        if dims is None:  # PNG, WebP, EXIF-turned, CMYK, ...: the reference reader
            img = load_rgb(io.BytesIO(data))
            return None if img is None else _pil_path(img, self.crop.draw(*img.size), size)
        if min(dims) < 2:  # load_rgb's rule for degenerate images
            return None
        # the reference draws nothing for a file it cannot read: keep the generators to rewind them if that happens
        before = torch.get_rng_state(), random.getstate()
        top, left, h, w, flip = self.crop.draw(*dims)
        f = 1
        while f < 8 and w >= 4 * f * size and h >= 4 * f * size:  # DCT scaling, the crop still at least 2x the output
            f *= 2
        try:
            arr = simplejpeg.decode_jpeg(data, "rgb", min_width=-(-dims[0] // f), min_height=-(-dims[1] // f))
        except ValueError:  # what libjpeg-turbo calls recoverable (extraneous bytes, a damaged scan, a subsampling
            img = load_rgb(io.BytesIO(data))  # it does not know) PIL may read: its decision, on the same box
            if img is None:
                torch.set_rng_state(before[0])
                random.setstate(before[1])
                return None
            return _pil_path(img, (top, left, h, w, flip), size)
        if f == 1:
            return _resize(arr[top:top + h, left:left + w], size, flip)
        # the box in the reduced image is fractional: PIL's resize takes it as it is (rounding it to whole pixels of
        # the reduced image shifts the crop by up to f/2 pixels: ~30 dB instead of ~47 against the reference)
        sy = sx = 1 / f  # libjpeg scales by exactly 1/f, rounding the size up: not arr.shape / dims
        out = Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC,
                                          box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        out = np.asarray(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out)
        return torch.from_numpy(out.copy()).permute(2, 0, 1)


class FastThen:
    """pipeline=fast for fine-tuning: `first` (a FastCropFlip) decodes, crops, resizes and flips; `then` (the
    reference's remaining steps, e.g. timm's RandAugment, ToTensor, Normalize, RandomErasing) runs on its picture
    as it would on the reference's. Both draw from the sample's generators in the reference's order."""
    wants_bytes = True

    def __init__(self, first: FastCropFlip, then: Callable[[Image.Image], torch.Tensor]):
        self.first, self.then = first, then

    def __call__(self, data: Union[bytes, Image.Image]) -> Optional[torch.Tensor]:
        x = self.first(data)  # uint8 [3, H, W], or None where the reference reader skips the image
        return None if x is None else self.then(Image.fromarray(x.permute(1, 2, 0).numpy()))


def normalize_on_device(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] (pipeline=fast / device) -> float, ImageNet-normalised, on x's device; a float batch
    (pipeline=torchvision, already normalised) passes through."""
    if x.dtype != torch.uint8:
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std
