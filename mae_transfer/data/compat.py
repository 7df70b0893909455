"""timm 1.0.31 RandAugment on Pillow >= 12: at the top magnitude `PosterizeIncreasing` asks for 0 bits
(keep nothing: a black image), which older Pillow did and Pillow now refuses with ValueError,
crashing a data worker at random. Do what older Pillow did: 0 bits is a black image."""
from PIL import Image, ImageOps


def _posterize(img, bits_to_keep, **__):
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_posterize() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if auto_augment.NAME_TO_OP.get(name) is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize
