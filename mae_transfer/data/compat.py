"""timm 1.0.x RandAugment on Pillow >= 12: at the top magnitude `PosterizeIncreasing` asks for 0 bits
(keep nothing: a black image), which older Pillow did and Pillow 12+ refuses with ValueError,
crashing a data worker at random. Do what older Pillow did: 0 bits is a black image.
Written for timm 1.0.31 and Pillow 13.0; applied by the fine-tuning recipe when it builds RandAugment."""
from PIL import Image, ImageOps
from timm.data import auto_augment

from ..env import log_patch, version_tuple


def _posterize(img, bits_to_keep, **__):
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> None:
    if version_tuple("pillow") < (12,) or version_tuple("timm")[:2] != (1, 0):
        return  # older Pillow posterizes to 0 bits itself; another timm may have fixed or moved the op

    names = [n for n in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")
             if auto_augment.NAME_TO_OP.get(n) is auto_augment.posterize]
    for name in names:
        auto_augment.NAME_TO_OP[name] = _posterize
    if names:
        log_patch(f"timm {'.'.join(map(str, version_tuple('timm')))} RandAugment posterize to 0 bits gives a black "
                  f"image on Pillow {'.'.join(map(str, version_tuple('pillow')))} (it raised ValueError)")
