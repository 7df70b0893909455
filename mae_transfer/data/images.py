"""Image data: ImageFolder or flat folders (shards: shards.py), the one image reader, embedded demo photos.

Randomness is per sample: sample `i` of epoch `e` draws its crop, flip and mask noise from a
generator seeded with (seed, e, i), and (e, i) is what the sampler hands the worker. A batch is
therefore the same whatever the number of workers, their persistence, the number of processes or
restarts -- which is what makes resume bit-identical and DDP equal to one process.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageFile, ImageOps
from torchvision import transforms

from ..errors import DataError  # noqa: F401  (re-exported)
from ..rng import derive_seed, seeded

_logger = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is skipped and counted, not half-decoded


def pretrain_transform(img_size: int = 224, scale=(0.2, 1.0)) -> Callable:
    """The paper's pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + flip only."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=scale, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _folder(root) -> Path:
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root} is a file: a folder of images is expected here")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    return root


def find_images(root) -> List[str]:
    """All images under `root`: an ImageFolder tree (labels ignored) or a flat folder. Symlinked subfolders
    are followed (a set assembled from links is common), each real folder once (a link loop ends)."""
    root = _folder(root)
    files, seen = [], set()
    for top, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        files += [os.path.join(top, n) for n in names
                  if os.path.splitext(n)[1].lower() in IMG_EXTENSIONS and os.path.isfile(os.path.join(top, n))]
    files.sort()
    if not files:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {root}")
    return files


EXIF_ORIENTATION = 0x0112  # 5-8 turn the picture by 90 degrees: width and height swap


def load_rgb(path, min_size: int = 2) -> Optional[Image.Image]:
    """The one image reader: decode a file (path or file object) to RGB (grey, CMYK, palette and RGBA are
    converted) turned upright by its EXIF orientation, as detectron2's `read_image` and mmcv's decode do, so
    an image, its boxes and its mask always agree; None for unreadable, truncated or degenerate (< `min_size`
    px) images."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) if im.getexif().get(EXIF_ORIENTATION, 1) != 1 else im
            im = im if im.mode == "RGB" else im.convert("RGB")  # no copy when already RGB
    except Exception as e:  # noqa: BLE001  any decode failure (OSError, a corrupt EXIF block's struct.error, ...)
        _logger.debug("skipping %s: %s", path, e)  # is an unreadable image: skipped and counted
        return None
    return im if min(im.size) >= min_size else None


def read_bytes(path) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        _logger.debug("skipping %s: %s", path, e)
        return None


def upright_size(im: Image.Image) -> Tuple[int, int]:
    """(width, height) of an opened image once its EXIF orientation is applied."""
    w, h = im.size
    return (h, w) if im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


def probe(path) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """(upright size, None) for a file that decodes (checked at 1/8 size where JPEG allows), or (None, why)."""
    try:
        if os.path.getsize(path) == 0:
            return None, "0 bytes"
        with Image.open(path) as im:
            size = upright_size(im)
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: an 8x smaller decode
            im.load()
    except Exception as e:  # noqa: BLE001  as load_rgb: any decode failure is an unreadable image
        return None, str(e) or type(e).__name__
    return size, None


def probe_all(paths: Sequence) -> List[Tuple[Optional[Tuple[int, int]], Optional[str]]]:
    """`probe` over many files in threads: PIL decodes without the GIL (COCO train, 118k images, takes
    seconds on a many-core node)."""

    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        return list(pool.map(probe, paths, chunksize=64))


def undecodable(paths: Sequence) -> List[Tuple[str, str]]:
    """(path, why) for every file PIL cannot decode (0 bytes, not an image, truncated): a labelled set
    is checked in full before training, so a bad file is one line there instead of a crash in a loader
    worker at iteration N."""
    return [(str(p), why) for p, (_, why) in zip(paths, probe_all(paths)) if why]


class ImageDataset(torch.utils.data.Dataset):
    """Files from `find_images`; returns a PIL image or None (skipped and counted by the collate)."""

    def __init__(self, root):
        self.files = find_images(root)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return load_rgb(self.files[i])

    def encoded(self, i) -> Optional[bytes]:
        """The file's bytes, undecoded (pipeline=fast decodes them itself); None if it cannot be read."""
        return read_bytes(self.files[i])


class LabelledImageFolder(torch.utils.data.Dataset):
    """An ImageFolder (one folder per class) returning (PIL image or None, label). `classes` pins the
    class list (the training set's), so a validation set cannot silently shift label indices."""

    def __init__(self, root, classes: Optional[Sequence[str]] = None):
        root = _folder(root)
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not found:
            raise DataError(f"{root} has no class folders (expected ImageFolder layout: {root}/<class>/<image>)")
        if classes is not None and list(found) != list(classes):
            missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise DataError(f"{root}: classes differ from the training set's (missing: {missing[:5]}, "
                            f"unknown: {extra[:5]})")
        self.classes = list(classes or found)
        self.samples = [(f, i) for i, c in enumerate(self.classes) for f in find_images(root / c)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return load_rgb(path), label

    def encoded(self, i):
        path, label = self.samples[i]
        return read_bytes(path), label


def demo_photos() -> List[Image.Image]:
    """Natural photos that scikit-image carries in its wheel (nothing is downloaded)."""
    import skimage  # only for the demo photos (scikit-image's own files)

    folder = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
             "motorcycle_left.png", "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png",
             "grass.png", "gravel.png", "brick.png"]
    photos = [load_rgb(str(folder / n)) for n in names if (folder / n).is_file()]
    photos = [p for p in photos if p is not None]
    if not photos:
        raise DataError(f"no demo photos found in {folder}; is scikit-image installed?")
    return photos


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a source of PIL images (a Dataset, or a list of photos sampled with replacement to
    `length`) with per-sample seeded augmentation and extras such as mask noise.

    Indexed by `(epoch, i)` -- what `EpochSampler` yields, so the epoch reaches every loader worker,
    persistent or not -- or by a plain `i` (= epoch 0). The source yields a PIL image, or a tuple
    (PIL image, label, ...) whose other items pass through. Returns `(sample, n_bad)` with `sample` =
    (image tensor, *rest, *extras(generator)) and `n_bad` = 1 if it was replaced. An unreadable
    image is replaced by a readable one drawn deterministically from the same seed when
    `replace_bad` (training: every batch stays full, so processes never disagree on the number of
    backward passes), else `sample` is None (evaluation). The transform draws from the global generators,
    seeded for the sample and put back afterwards (`rng.seeded`); `python_numpy=False` where it draws from
    torch's alone (torchvision's crops and flips), which saves restoring `random`'s and numpy's states.
    """

    MAX_TRIES = 50

    def __init__(self, source, transform: Callable, seed: int = 0, length: Optional[int] = None,
                 extras: Sequence[Callable[[torch.Generator], torch.Tensor]] = (), replace_bad: bool = True,
                 python_numpy: bool = True):
        self.source, self.transform, self.seed, self.extras = source, transform, seed, tuple(extras)
        self.length, self.replace_bad, self.python_numpy = length or len(source), replace_bad, python_numpy
        self.encoded = getattr(transform, "wants_bytes", False) and hasattr(source, "encoded")

    def __len__(self):
        return self.length

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        seed = derive_seed("sample", self.seed, epoch, i)
        with seeded(seed, self.python_numpy):
            for n_bad in range(self.MAX_TRIES if self.replace_bad else 1):
                j = i if n_bad == 0 else int(torch.randint(len(self.source), ()))
                if isinstance(self.source, list):  # demo photos: pick one at random
                    item = self.source[int(torch.randint(len(self.source), ()))]
                elif self.encoded:  # the transform decodes (pipeline=fast): bytes, not a PIL image
                    item = self.source.encoded(j)
                else:
                    item = self.source[j]
                img, *rest = item if isinstance(item, tuple) else (item,)
                x = None if img is None else self.transform(img)  # a fast transform's None: undecodable
                if x is not None:
                    break
            else:
                if not self.replace_bad:
                    return None, 1
                raise DataError(f"{self.MAX_TRIES} images in a row were unreadable (starting at index {i}); "
                                "is the data folder mostly broken files?")
        g = torch.Generator().manual_seed(seed)
        return (x, *rest, *(f(g) for f in self.extras)), int(n_bad > 0)


class EpochSampler(torch.utils.data.Sampler):
    """`DistributedSampler`'s order (a permutation of seed + epoch, split over processes; one process
    with batch B*k sees what k processes with batch B see) yielding `(epoch, index)` pairs: the
    epoch travels with each index to the worker that loads it, so persistent workers, which never
    see the main process's `set_epoch`, still draw fresh crops and masks every epoch. `start` skips
    this process's first samples of the epoch (resume in the middle of an epoch)."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True):
        self.order = torch.utils.data.DistributedSampler(dataset, num_replicas=num_replicas, rank=rank,
                                                         shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0, segments=None) -> list:
        """`segments`: ShardSampler's record of an epoch's layouts; this order needs none (the position alone
        is exact at any world size)."""
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start
        return []

    def __iter__(self):
        for pos, i in enumerate(self.order):
            if pos >= self.start:
                yield self.epoch, i

    def __len__(self):
        return len(self.order) - self.start

    def full_length(self) -> int:
        return len(self.order)


def collate_skip_bad(batch):
    """Default collate over the readable samples of `(sample, n_bad)` items; returns (batch or None
    if nothing was readable, number of unreadable images met)."""
    good = [s for s, _ in batch if s is not None]
    n_bad = sum(n for _, n in batch)
    if good and hasattr(good[0][0], "collate"):  # pipeline=device: images that are decoded where they are moved
        rest = torch.utils.data.default_collate([s[1:] for s in good]) if len(good[0]) > 1 else []
        return [type(good[0][0]).collate([s[0] for s in good]), *rest], n_bad
    return (torch.utils.data.default_collate(good) if good else None), n_bad


def worker_threads(_):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
