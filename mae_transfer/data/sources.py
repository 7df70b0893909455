"""What a `--data-path` names, as a dataset: one function per use, so every recipe reads every kind of source.

    image_source(path)          pretraining: shards (brace pattern, URL list, .tar / .parquet files or a folder of
                                them, a save_to_disk folder) or a folder of images (ImageFolder tree or flat)
    labelled_source(path, ...)  fine-tuning / linear probing: labelled shards (`.cls`, `.json`, a `label` column)
                                or an ImageFolder tree
    input_paths(path)           the local files and folders it reads, which no output may land in or beside

`timeout`: seconds a `pipe:` command or a remote URL may send nothing (the `data_timeout` setting).
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from braceexpand import UnbalancedBracesError, braceexpand

from ..errors import DataError
from ..reading import read_json, read_lines
from ..schemas import HfState, ShardIndex
from .images import IMG_EXTENSIONS, ImageDataset, LabelledImageFolder
from .shards import IMAGE_EXTS, Shard, Shards, count_samples, kind_of
from .streams import DEFAULT_TIMEOUT, local

_logger = logging.getLogger(__name__)
INDEX = "index.json"


def image_source(path, window: int = 1000, timeout: float = DEFAULT_TIMEOUT) -> torch.utils.data.Dataset:
    return open_shards(path, window=window, timeout=timeout) if is_shard_source(path) else ImageDataset(path)


def labelled_source(path, classes: Optional[Sequence[str]] = None, window: int = 1000, train: bool = True,
                    timeout: float = DEFAULT_TIMEOUT):
    """An ImageFolder, or labelled shards (their index.json's class names, where they have one, must be the
    training set's). A validation set's shards are read in order, unshuffled."""
    if not is_shard_source(path):
        return LabelledImageFolder(Path(path), classes=classes)
    src = open_shards(path, labelled=True, window=window if train else 0, timeout=timeout)
    if classes is not None and src.classes is not None and list(src.classes) != list(classes):
        raise DataError(f"{path}: the shards' classes (index.json) differ from the training set's")
    return src


def open_shards(spec, labelled: bool = False, window: int = 1000, timeout: float = DEFAULT_TIMEOUT) -> Shards:
    """`shards.Shards` over what `spec` names, its first sample checked (readable, labelled where needed)."""
    urls = shard_urls(spec)
    index = _local_index(urls)
    src = Shards(list_shards(spec, urls, index, timeout), spec, labelled, window, index.classes if index else None,
                 timeout)
    src.check_first()
    return src


def is_shard_source(spec) -> bool:
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        shards = bool(_shard_files(p))  # files only: a class folder named `v1.tar` is a class folder
        # loose images, or class folders of them (`data/` is where HF keeps its parquet files)
        images = (f for d in p.iterdir()
                  for f in ((d,) if d.is_file() else d.iterdir() if d.is_dir() and d.name != "data" else ()))
        if shards and any(f.suffix.lower() in IMG_EXTENSIONS for f in images):
            raise DataError(f"{p} holds both .tar / .parquet files and images: give the shards or the images (move "
                            "the other out)")
        if not shards and (p / "dataset_dict.json").is_file():
            splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
            raise DataError(f"{p} is a DatasetDict saved with save_to_disk: give one split's folder ("
                            f"{', '.join(str(p / d) for d in splits) or 'none found'})")
        return shards or (p / "state.json").is_file()
    if p.exists():
        return p.suffix.lower() in (".tar", ".parquet", ".txt")
    return (s.startswith(("pipe:", "hf://", "hfds/")) or "://" in s or ("{" in s and "}" in s)
            or p.suffix.lower() in (".tar", ".parquet", ".txt"))


def shard_urls(spec) -> List[str]:
    """The shards a `--data-path` names: a brace pattern, a list file (.txt, one URL or path per line, relative to
    the file), one shard, a folder of .tar or .parquet files (or data/*.parquet, as on the HF hub), or a
    `save_to_disk` folder."""
    s = str(spec)
    p = Path(s)
    if s.startswith("hf://") or s.startswith("hfds/"):
        raise DataError(f"{s}: hub datasets are not downloaded at run time; fetch it first (datasets' "
                        "load_dataset(...).save_to_disk(DIR), or `huggingface-cli download` for its parquet files) "
                        "and give the folder")
    if p.suffix == ".txt" and local(s):
        lines = [ln for ln in read_lines(p, "shard list", DataError) if not ln.startswith("#")]
        urls = [ln if not local(ln) or os.path.isabs(ln) else str(p.parent / ln) for ln in lines]
    elif "{" in s and "}" in s and not p.exists():
        try:
            urls = list(braceexpand(s))
        except UnbalancedBracesError:
            raise DataError(f"{s}: unbalanced braces in the shard pattern") from None
    elif p.is_dir():
        if (p / "state.json").is_file():
            state = read_json(p / "state.json", HfState, DataError, "save_to_disk state file")
            urls = [str(p / f.filename) for f in state.data_files]
        else:
            urls = _shard_files(p)
    else:
        urls = [s]
    if not urls:
        raise DataError(f"{s}: no shards (.tar, .parquet or .arrow files) found")
    folders = [u for u in urls if local(u) and os.path.isdir(u)]
    if folders:
        raise DataError(f"{folders[0]} is a folder, not a shard (.tar, .parquet or .arrow file)")
    missing = [u for u in urls if local(u) and not os.path.isfile(u)]
    if missing:
        raise DataError(f"{missing[0]}: shard not found" + (f" (and {len(missing) - 1} more of {len(urls)})"
                                                            if len(missing) > 1 else ""))
    return urls


def _shard_files(folder: Path) -> List[str]:
    """A folder's shards: its .tar files, else its .parquet files, else data/*.parquet (files: a folder is never a
    shard, whatever its name)."""
    for pattern in ("*.tar", "*.parquet", "data/*.parquet"):
        found = sorted(str(f) for f in folder.glob(pattern) if f.is_file())
        if found:
            return found
    return []


def input_paths(spec) -> List[str]:
    """The local files and folders a `--data-path` reads, for `outputs.claim(inputs=...)`: the path itself, and for
    a list file, a brace pattern or one shard, every local shard it names and the folder holding each (no output
    lands in or beside a shard: it would end up in the data folder). A source that cannot be listed gives the path
    alone; reading it reports what is wrong."""
    s = str(spec or "")
    if not s or not local(s):
        return []
    if Path(s).is_dir() or not is_shard_source(s):  # a folder of images or shards; a file that is no source at all
        return [s]
    try:
        urls = shard_urls(s)
    except DataError:
        return [s]
    named = [u[len("file://"):] if u.startswith("file://") else u for u in urls]
    named = [u for u in named if local(u)]
    return list(dict.fromkeys([s, *named, *(os.path.dirname(os.path.abspath(u)) for u in named)]))


def _local_index(urls: Sequence[str]) -> Optional[ShardIndex]:
    """The index.json in the shards' folder, when they are local and in one folder."""
    folders = {os.path.dirname(u) for u in urls if local(u)}
    if len(folders) != 1 or not os.path.isfile(os.path.join(*folders, INDEX)):
        return None
    return read_json(os.path.join(*folders, INDEX), ShardIndex, DataError, "shard index")


def _index_counts(urls: Sequence[str], index: Optional[ShardIndex]) -> Dict[str, int]:
    """Sample counts from the shards' index, for shards whose size still matches."""
    if index is None:
        return {}
    folder = next(os.path.dirname(u) for u in urls if local(u))  # the one folder _local_index found it in
    counts = {}
    for e in index.shards:
        path = os.path.join(folder, e.name)
        if e.samples * 1024 > e.bytes:  # a tar member is at least a 512-byte header and a 512-byte block
            raise DataError(f"{folder}/{INDEX}: {e.name} cannot hold {e.samples} samples in {e.bytes} bytes")
        if os.path.isfile(path) and os.path.getsize(path) == e.bytes:
            counts[path] = e.samples
    return counts


def list_shards(spec, urls: Sequence[str], index: Optional[ShardIndex], timeout: float = DEFAULT_TIMEOUT
                ) -> List[Shard]:
    """The shards `spec` names (`urls`) with their counts: from the index where one matches, else read (in
    threads)."""
    known = _index_counts(urls, index)
    todo = [u for u in urls if u not in known]
    if todo:
        if len(todo) > 16:
            _logger.info("counting the samples of %d shards (no index.json beside them; `mae-transfer shards` "
                         "writes one)", len(todo))
        with ThreadPoolExecutor(min(16, len(todo))) as pool:
            known.update(zip(todo, pool.map(lambda u: count_samples(u, timeout), todo)))
    shards = [Shard(u, known[u], kind_of(u)) for u in urls]
    if not sum(s.count for s in shards):
        raise DataError(f"{spec}: the shards hold no images ({', '.join(IMAGE_EXTS)} members)")
    return shards
