"""`mae-transfer shards SRC OUT`: a folder of images as WebDataset shards, with the index readers count from.

    OUT/shard-000000.tar ...   members KEY.jpg|png|webp (+ KEY.cls for an ImageFolder), KEY = the sample's number
    OUT/index.json             samples, bytes and SHA-256 per shard; the class names (schemas.ShardIndex)

Samples are shuffled (seeded) before they are cut into shards: a reader shuffles only within a window, so a shard
must already mix the classes. Shards are written in parallel processes, each atomically, by one writer at a time
(`outputs.claim`: a second is one error naming the first); a killed writer leaves `.progress.jsonl` and, run
again with the same arguments, writes only the shards it lacks. Images none of which can be read are an error,
not an empty index. `max_side` re-encodes (EXIF-upright, longer side at most `max_side`, JPEG at `quality`): what
FFCV / DailyMAE do to cut decode time; bench/data_scale.py measures what it saves."""
import hashlib
import io
import json
import logging
import multiprocessing
import os
import tarfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from ..errors import DataError
from ..outputs import LOCK, atomic, check_new, claim, private, refuse_inputs, write_json
from ..reading import validate
from ..schemas import ShardEntry, ShardIndex
from .images import IMG_EXTENSIONS, find_images, load_rgb, probe

_logger = logging.getLogger("mae_transfer")
PROGRESS = ".progress.jsonl"
KEEP = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # stored as they are; others become PNG


def _samples(src: Path) -> Tuple[List[Tuple[str, Optional[int]]], Optional[List[str]]]:
    """(path, label) of every image, and the class names: an ImageFolder (no image at the top, one folder per
    class) is labelled; any other folder is not (its images are found at every depth)."""
    top = [p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    classes = sorted(d.name for d in src.iterdir() if d.is_dir()) if not top else []
    if not classes:
        return [(f, None) for f in find_images(src)], None
    found = [(f, c) for c, name in enumerate(classes) for f in _images_or_none(src / name)]
    if not found:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {src}")
    return found, classes


def _images_or_none(folder: Path) -> List[str]:
    try:
        return find_images(folder)
    except DataError:  # an empty class folder
        return []


def _encode(path: str, max_side: Optional[int], quality: int) -> Optional[Tuple[str, bytes]]:
    """(extension, bytes) of one image for a shard; None if it cannot be decoded."""
    ext = KEEP.get(os.path.splitext(path)[1].lower())
    if max_side is None and ext is not None:
        if probe(path)[1] is not None:  # decodes (at 1/8 size for a JPEG)?
            return None
        with open(path, "rb") as f:
            return ext, f.read()
    img = load_rgb(path)  # upright by its EXIF orientation: the bytes written need none
    if img is None:
        return None
    buf = io.BytesIO()
    if max_side is None:
        img.save(buf, "PNG")
        return "png", buf.getvalue()
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
    img.save(buf, "JPEG", quality=quality)
    return "jpg", buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no time stamp: the same input, the same bytes
    tf.addfile(info, io.BytesIO(data))


def _write_one(task) -> dict:
    out, name, items, max_side, quality = task
    skipped = 0
    with atomic(Path(out) / name) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, path, label in items:
                enc = _encode(path, max_side, quality)
                if enc is None:
                    skipped += 1
                    continue
                _add(tf, f"{key}.{enc[0]}", enc[1])
                if label is not None:
                    _add(tf, f"{key}.cls", str(label).encode())
    data = (Path(out) / name).read_bytes()
    return {"name": name, "samples": len(items) - skipped, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "skipped": skipped}


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: when the `shards` run is killed (SIGKILL, the OOM killer) its encoders stop too, instead
    of running on as orphans that keep writing into the output folder the next run resumes."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def write_shards(src, out, shard_size: int = 1000, max_side: Optional[int] = None, quality: int = 90,
                 workers: int = 0, seed: int = 0) -> dict:
    """Write the shards (see the module's docstring); returns a summary. `workers` 0: one per CPU core."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: a folder of images is expected (an ImageFolder tree or a flat folder)")
    refuse_inputs([out], [src])
    samples, classes = _samples(src)
    settings = {"source": str(src.resolve()), "images": len(samples), "shard_size": shard_size,
                "max_side": max_side, "quality": quality if max_side else None, "seed": seed}
    if out.is_symlink() or out.is_file():
        check_new(out, "shard folder")
    with claim(out, markers_ok=True, inputs=[src]):  # one writer at a time; a refusal leaves nothing behind
        summary = _write(src, out, samples, classes, settings, shard_size, max_side, quality, workers, seed)
        (out / LOCK).unlink()  # a finished folder holds the shards and their index only (a later writer refuses it)
    return summary


def _write(src: Path, out: Path, samples, classes, settings: dict, shard_size: int, max_side: Optional[int],
           quality: int, workers: int, seed: int) -> dict:
    done = _progress(out, settings)
    order = np.random.default_rng(seed).permutation(len(samples))
    tasks = []
    for s, lo in enumerate(range(0, len(samples), shard_size)):
        name = f"shard-{s:06d}.tar"
        if name not in done:
            items = [(f"{i:09d}", str(samples[j][0]), samples[j][1]) for i, j in
                     zip(range(lo, lo + shard_size), order[lo:lo + shard_size])]
            tasks.append((str(out), name, items, max_side, quality))
    n_shards = -(-len(samples) // shard_size)
    if done:
        _logger.info("%s: %d of %d shards were written by an earlier run; writing the other %d", out, len(done),
                     n_shards, len(tasks))
    workers = min(workers or os.cpu_count() or 1, max(1, len(tasks)))
    with open(private(out / PROGRESS), "a") as log, ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"), initializer=_exit_with_parent,
            initargs=(os.getpid(),)) as pool:
        for entry in pool.map(_write_one, tasks):
            done[entry["name"]] = entry
            log.write(json.dumps(entry) + "\n")
            log.flush()
            os.fsync(log.fileno())
    entries = [done[f"shard-{s:06d}.tar"] for s in range(n_shards)]
    if not sum(e["samples"] for e in entries):
        raise DataError(f"none of the {len(samples)} images under {src} could be read: no shards written")
    index = ShardIndex(format="mae-transfer shards", version=1, classes=classes, settings=settings,
                       shards=[ShardEntry(**{k: e[k] for k in ("name", "samples", "bytes", "sha256")})
                               for e in entries])
    write_json(out / "index.json", index.model_dump())
    (out / PROGRESS).unlink()
    return {"out": str(out), "shards": n_shards, "samples": sum(e["samples"] for e in entries),
            "skipped": sum(e.get("skipped", 0) for e in entries), "bytes": sum(e["bytes"] for e in entries),
            "pattern": str(out / (f"shard-{{000000..{n_shards - 1:06d}}}.tar" if n_shards > 1 else "shard-000000.tar")),
            "classes": len(classes or [])}


def _progress(out: Path, settings: dict) -> dict:
    """The shards an interrupted run with the same settings finished (their files intact), or {} for a new OUT."""
    log = out / PROGRESS
    if not log.is_file():
        if set(os.listdir(out)) - {LOCK}:  # under the lock: what another writer finished is not written over
            check_new(out, "shard folder")
        log.write_text(json.dumps({"settings": settings}) + "\n")
        return {}
    records = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the line a killed writer was writing
            continue
    first, entries = (records[0], records[1:]) if records and isinstance(records[0], dict) else ({}, [])
    if first.get("settings") != settings:
        raise DataError(f"{out} holds an unfinished write with other settings ({first.get('settings')}); "
                        "run it again with those, or choose a new output folder")
    for stale in out.glob(".shard-*"):  # a shard a killed writer was writing
        stale.unlink()
    done = {}
    for e in (e for e in entries if isinstance(e, dict)):
        validate({k: e.get(k) for k in ("name", "samples", "bytes", "sha256")}, ShardEntry, DataError, str(log))
        path = out / e["name"]
        if path.is_file() and path.stat().st_size == e["bytes"]:
            done[e["name"]] = e
    return done
