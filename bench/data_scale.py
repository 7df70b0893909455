#!/usr/bin/env python
"""What a large pretraining set costs before the first batch: a folder of image files vs the same count of
samples in WebDataset shards with an index, side by side per size; and what re-encoding saves.

  python bench/data_scale.py                  # 10k, 100k and 1M entries (~6 min, ~3 GB of links in /tmp)
  python bench/data_scale.py --quick          # 10k and 100k (~1 min)

Start-up = building the dataset (listing the folder / reading index.json) + planning epoch 0's order (the
sampler) + the first batch of 64 through the loader (decoded, cropped): what a job waits for after every
(re)start. Bookkeeping = planning one more epoch's order alone. The folder is 1000 class folders of hard links
to one ImageNet-sized JPEG each (no data written per file: the listing is what costs); the shards hold
1000 samples each, hard links to one written tar. Re-encoding: decode + the paper's crop of web-sized photos
(scikit-image's, 1600x1200, quality 90) as written and after `mae-transfer shards --max-side 512 --quality 90`.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mae_transfer.data import SeededSamples, demo_photos, pretrain_transform  # noqa: E402
from mae_transfer.data.images import load_rgb  # noqa: E402
from mae_transfer.data.sources import image_source  # noqa: E402
from mae_transfer.engine.common import make_loader  # noqa: E402
from mae_transfer.engine.distributed import DistInfo  # noqa: E402


def _jpeg(size=(500, 375)) -> bytes:
    buf = io.BytesIO()
    demo_photos()[0].resize(size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_folder(root: Path, n: int, data: bytes) -> None:
    per = -(-n // 1000)
    for c in range(1000):
        d = root / "train" / f"c{c:04d}"
        d.mkdir(parents=True)
        one = d / f"{0:06d}.jpg"
        one.write_bytes(data)  # one file per class, the others links to it (a file system allows ~65k links)
        for i in range(1, min(per, n - c * per)):
            os.link(one, d / f"{i:06d}.jpg")


def make_shards(root: Path, n: int, data: bytes) -> None:
    root.mkdir(parents=True)
    one = root / "one.tar.src"  # 1M samples = 1000 links to it: within the link limit
    with tarfile.open(one, "w") as tf:
        for i in range(1000):
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    size, sha = one.stat().st_size, hashlib.sha256(one.read_bytes()).hexdigest()
    shards = []
    for s in range(-(-n // 1000)):
        os.link(one, root / f"shard-{s:06d}.tar")
        shards.append({"name": f"shard-{s:06d}.tar", "samples": 1000, "bytes": size, "sha256": sha})
    (root / "index.json").write_text(json.dumps({"format": "mae-transfer shards", "version": 1, "shards": shards}))
    one.unlink()


def startup(path) -> tuple:
    """(seconds to the first batch, seconds to plan one more epoch)."""
    t0 = time.perf_counter()
    ds = SeededSamples(image_source(path), pretrain_transform(224), 0)
    loader = make_loader(ds, 64, DistInfo(), 0, num_workers=0)
    loader.sampler.set_epoch(0)
    next(iter(loader))
    t1 = time.perf_counter()
    loader.sampler.set_epoch(1)
    for _ in loader.sampler:
        break
    return t1 - t0, time.perf_counter() - t1


def reencode_table(reps: int) -> list:
    tf = pretrain_transform(224)
    rows = []
    for photo in demo_photos()[:4]:
        big = io.BytesIO()
        photo.resize((1600, 1200)).save(big, "JPEG", quality=90)
        small = io.BytesIO()
        load_rgb(io.BytesIO(big.getvalue())).resize((512, 384), Image.Resampling.LANCZOS).save(small, "JPEG",
                                                                                                 quality=90)
        times = []
        for data in (big.getvalue(), small.getvalue()):
            t0 = time.perf_counter()
            for _ in range(reps):
                tf(load_rgb(io.BytesIO(data)))
            times.append((time.perf_counter() - t0) / reps)
        rows.append((len(big.getvalue()), len(small.getvalue()), *times))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10k and 100k entries only")
    p.add_argument("--tmp", default=tempfile.gettempdir())
    a = p.parse_args()
    torch.set_num_threads(1)
    sizes = [10_000, 100_000] + ([] if a.quick else [1_000_000])
    data = _jpeg()
    print("| entries | folder: to first batch | shards: to first batch | ratio | folder: plan an epoch | "
          "shards: plan an epoch |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        work = Path(tempfile.mkdtemp(dir=a.tmp, prefix="data_scale-"))
        try:
            make_folder(work / "folder", n, data)
            make_shards(work / "shards", n, data)
            (fs, fe), (ss, se) = startup(work / "folder" / "train"), startup(work / "shards")
            print(f"| {n:,} | {fs:.2f} s | {ss:.2f} s | {fs / ss:.1f}x | {fe * 1e3:.0f} ms | {se * 1e3:.0f} ms |",
                  flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    rows = reencode_table(3 if a.quick else 10)
    big, small = sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)
    tb, ts = sum(r[2] for r in rows) / len(rows), sum(r[3] for r in rows) / len(rows)
    print(f"\nre-encoding web photos (1600x1200 q90 -> --max-side 512 q90): {big / 1024:.0f} KiB -> "
          f"{small / 1024:.0f} KiB a photo ({big / small:.1f}x less to read); decode + crop {tb * 1e3:.1f} ms -> "
          f"{ts * 1e3:.1f} ms ({tb / ts:.1f}x faster per core)")


if __name__ == "__main__":
    main()
