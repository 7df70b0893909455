"""What a `--data-path` names, as a dataset: one function per use, so every recipe reads every kind of source.

    image_source(path)          pretraining: shards (brace pattern, URL list, .tar / .parquet files or a folder of
                                them, a save_to_disk folder) or a folder of images (ImageFolder tree or flat)
    labelled_source(path, ...)  fine-tuning / linear probing: labelled shards (`.cls`, `.json`, a `label` column)
                                or an ImageFolder tree
"""
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import DataError
from .images import ImageDataset, LabelledImageFolder
from .shards import Shards, is_shard_source


def image_source(path, window: int = 1000) -> torch.utils.data.Dataset:
    return Shards(path, window=window) if is_shard_source(path) else ImageDataset(path)


def labelled_source(path, classes: Optional[Sequence[str]] = None, window: int = 1000, train: bool = True):
    """An ImageFolder, or labelled shards (their index.json's class names, where they have one, must be the
    training set's). A validation set's shards are read in order, unshuffled."""
    if not is_shard_source(path):
        return LabelledImageFolder(Path(path), classes=classes)
    src = Shards(path, labelled=True, window=window if train else 0)
    if classes is not None and src.classes is not None and list(src.classes) != list(classes):
        raise DataError(f"{path}: the shards' classes (index.json) differ from the training set's")
    return src
