#!/usr/bin/env python
"""Images/s per CPU core of the pretraining input pipeline: the torchvision reference, the default (pipeline=fast)
and the candidates it was chosen from, side by side in one run, with each one's PSNR against the reference on
the same crops and the CPU cores per GPU each would need; then fine-tuning's and linear probing's training
transforms (pipeline=torchvision vs fast, RandAugment and erasing included).

  python bench/data_speed.py            # ~4 min: ImageNet-sized and web-sized photos, folders and shards
  python bench/data_speed.py --quick    # ~1 min; the last line ends in the default's speed-up per core
  python bench/data_speed.py --gpu      # pipeline=device on a CUDA GPU: nvJPEG batches (bench/gpu_check.py)

Photos: scikit-image's, re-encoded at ImageNet size (500x375) and web size (1600x1200), JPEG quality 90, 200
files a size. Every path runs through the real loader (SeededSamples + the sampler + DataLoader with 1 and 2
persistent workers, batch 32, the paper's crop of 224); images/s per core = images/s / workers. The reference
ends in float32 normalised batches, the others in uint8 batches (normalised on the device, not counted: a GPU
does it in microseconds). Cores per GPU: MAE pretraining at 45 % MFU of an H200's 790 dense bf16 TFLOP/s,
FLOPs per image from the model's shapes (forward + backward = 3x forward; ViT-B ~58 GFLOP)."""
import argparse
import io
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mae_transfer.data import IMAGENET_MEAN, IMAGENET_STD, SeededSamples, demo_photos, pretrain_transform  # noqa: E402
from mae_transfer.data.device import DeviceCropFlip, EncodedImage  # noqa: E402
from mae_transfer.data.fast import FastCropFlip  # noqa: E402
from mae_transfer.data.images import ImageDataset, load_rgb  # noqa: E402
from mae_transfer.data.sources import image_source  # noqa: E402
from mae_transfer.data.write_shards import write_shards  # noqa: E402
from mae_transfer.engine.common import make_loader  # noqa: E402
from mae_transfer.engine.distributed import DistInfo  # noqa: E402
from mae_transfer.engine.finetune import ClassifyConfig, build_transforms  # noqa: E402
from mae_transfer.rng import seeded  # noqa: E402

SIZES = {"ImageNet 500x375": (500, 375), "web 1600x1200": (1600, 1200)}
# MAE pretraining shapes: (width, depth, patch), decoder 512 x 8, 224 px, 75 % masked
MODELS = {"ViT-B/16": (768, 12, 16), "ViT-L/16": (1024, 24, 16), "ViT-H/14": (1280, 32, 14)}
H200_BF16, MFU = 790e12, 0.45


class PilDraft(FastCropFlip):
    """Candidate: PIL decode at 1/2-1/8 (draft) where the crop stays >= 2x the output, one PIL resize with the box."""

    def __call__(self, data):
        im = Image.open(io.BytesIO(data))
        top, left, h, w, flip = self.crop.draw(*im.size)
        f = 1
        while f < 8 and w >= 4 * f * self.crop.size and h >= 4 * f * self.crop.size:
            f *= 2
        full = im.size
        if f > 1:
            im.draft("RGB", (full[0] // f, full[1] // f))
        sx, sy = im.size[0] / full[0], im.size[1] / full[1]
        out = im.convert("RGB").resize((self.crop.size,) * 2, Image.Resampling.BICUBIC,
                                       box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out
        return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


class OpenCV(FastCropFlip):
    """Candidate: OpenCV decode (full size) + one INTER_AREA / bicubic resize (the issue's probe)."""

    def __call__(self, data):
        arr = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        top, left, h, w, flip = self.crop.draw(arr.shape[1], arr.shape[0])
        s = self.crop.size
        out = cv2.resize(arr[top:top + h, left:left + w], (s, s),
                         interpolation=cv2.INTER_AREA if min(w, h) >= s else cv2.INTER_CUBIC)
        return torch.from_numpy(cv2.flip(out, 1) if flip else out).permute(2, 0, 1)


PATHS = {"torchvision (reference)": lambda: pretrain_transform(224), "fast (default)": lambda: FastCropFlip(224),
         "PIL draft + one resize": lambda: PilDraft(224), "OpenCV decode + resize": lambda: OpenCV(224)}


def rate(source, make, workers: int, seconds: float, python_numpy: bool = False) -> float:
    ds = SeededSamples(source, make(), 0, python_numpy=python_numpy)
    loader = make_loader(ds, 32, DistInfo(), 0, workers)
    n, t0, epoch = 0, None, 0
    while True:
        loader.sampler.set_epoch(epoch)
        for batch, _ in loader:
            if t0 is None:
                t0 = time.perf_counter()  # after the first batch: workers started, files cached
                continue
            n += len(batch[0])
            if time.perf_counter() - t0 > seconds:
                return n / (time.perf_counter() - t0)
        epoch += 1


def _pixels(x) -> torch.Tensor:
    """A path's output as float pixels 0-255: uint8 as it is, a normalised float image un-normalised."""
    x = EncodedImage.collate([x]).to("cpu")[0] if isinstance(x, EncodedImage) else x
    if x.dtype == torch.uint8:
        return x.float()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1) * 255


def psnr_vs_reference(files, make, n: int, make_ref=lambda: pretrain_transform(224), python_numpy=False) -> float:
    ref_tf, tf, scores = make_ref(), make(), []
    for k in range(n):
        data = Path(files[k % len(files)]).read_bytes()
        with seeded(k, python_numpy):
            ref = _pixels(ref_tf(load_rgb(io.BytesIO(data))))
        with seeded(k, python_numpy):
            x = _pixels(tf(data))
        mse = float(((x - ref) ** 2).mean())
        scores.append(10 * math.log10(255 ** 2 / mse) if mse else math.inf)
    return float(np.median(scores))


def classify_rows(files, seconds: float, n_psnr: int) -> None:
    """Fine-tuning's (timm: crop, flip, RandAugment, ToTensor, Normalize, erasing) and linear probing's training
    transforms, pipeline=torchvision vs fast, 1 worker, on the ImageNet-sized files."""
    print("\n| recipe | path | images/s per core | vs reference | PSNR vs reference (median) |")
    print("|---|---|---:|---:|---:|")
    for mode in ("finetune", "linprobe"):
        make = {p: (lambda p=p: build_transforms(ClassifyConfig(mode=mode, pipeline=p))[0])
                for p in ("torchvision", "fast")}
        base = rate(ImageDataset(Path(files[0]).parent), make["torchvision"], 1, seconds, python_numpy=True)
        r = rate(ImageDataset(Path(files[0]).parent), make["fast"], 1, seconds, python_numpy=True)
        q = psnr_vs_reference(files, make["fast"], n_psnr, make["torchvision"], python_numpy=True)
        print(f"| {mode} | torchvision (reference) | {base:,.0f} | 1.00x | -- |")
        print(f"| {mode} | fast (default) | {r:,.0f} | {r / base:.2f}x | {q:.1f} dB |", flush=True)


def mae_gflop(width: int, depth: int, patch: int) -> float:
    """Forward + backward GFLOP of one 224 px image: encoder on the 25 % visible patches + cls, decoder 512 x 8."""
    tokens = (224 // patch) ** 2
    vis = tokens // 4 + 1

    def blocks(d, n, layers):
        return layers * (24 * d * d * n + 4 * n * n * d)
    fwd = blocks(width, vis, depth) + blocks(512, tokens + 1, 8) + 2 * tokens // 4 * 3 * patch * patch * width
    fwd += 2 * (vis * width * 512 + tokens * 512 * 3 * patch * patch)
    return 3 * fwd / 1e9


def gpu_bench(seconds: float, dev: torch.device, copies: int = 20) -> None:
    """pipeline=device on CUDA: batches of 256 JPEGs decoded by nvJPEG, cropped and resized on the GPU."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (smoke)"
    tf = DeviceCropFlip(224)
    for label, size in SIZES.items():
        items = []
        for k, p in enumerate(demo_photos() * copies):
            buf = io.BytesIO()
            p.resize(size).save(buf, "JPEG", quality=90)
            with seeded(k, False):
                items.append(tf(buf.getvalue()))
        batch = EncodedImage.collate(items[:256])
        batch.to(dev)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            batch.to(dev)
            n += len(batch)
        sync()
        print(f"| {label} | {n / (time.perf_counter() - t0):,.0f} images/s | {name} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--gpu", action="store_true", help="pipeline=device on a CUDA GPU")
    p.add_argument("--device-smoke", action="store_true", help="--gpu's code on the CPU, a few batches")
    a = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    seconds = 1.5 if a.quick else 5.0
    if a.gpu or a.device_smoke:
        print("| photos | pipeline=device decode + crop (batch 256) | device |\n|---|---:|---|")
        return gpu_bench(0.1 if a.device_smoke else seconds, torch.device("cuda" if a.gpu else "cpu"),
                         2 if a.device_smoke else 20)
    work = Path(tempfile.mkdtemp(prefix="data_speed-"))
    speedups = {}
    try:
        print("| photos | source | path | workers | images/s | per core | vs reference | PSNR vs reference |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for label, size in SIZES.items():
            folder = work / label.split()[0]
            folder.mkdir()
            for k in range(200):
                demo_photos()[k % 14].resize(size).save(folder / f"{k:04d}.jpg", "JPEG", quality=90)
            sources = {"files": ImageDataset(folder)}
            if not a.quick:
                write_shards(folder, work / f"{folder.name}-shards", shard_size=50, workers=1)
                sources["shards"] = image_source(work / f"{folder.name}-shards", window=64)
            files = sources["files"].files
            for src_name, src in sources.items():
                for workers in ((1,) if a.quick else (1, 2)):
                    base = None
                    for name, make in PATHS.items():
                        r = rate(src, make, workers, seconds) / workers
                        base = base or r
                        q = "--" if base == r else f"{psnr_vs_reference(files, make, 8 if a.quick else 32):.1f} dB"
                        print(f"| {label} | {src_name} | {name} | {workers} | {r * workers:,.0f} | {r:,.0f} | "
                              f"{r / base:.2f}x | {q} |", flush=True)
                        if name.startswith("fast"):
                            speedups.setdefault(label, []).append(r / base)
                        if label.startswith("ImageNet") and src_name == "files":
                            speedups.setdefault(name, []).append(r)
            if label.startswith("ImageNet"):
                imagenet_files = files
        classify_rows(imagenet_files, seconds, 8 if a.quick else 32)
        print("\n| model | GPU images/s at 45 % MFU | cores: reference | cores: fast |\n|---|---:|---:|---:|")
        ref, fast = (np.mean(speedups[k]) for k in ("torchvision (reference)", "fast (default)"))
        for name, shape in MODELS.items():
            need = MFU * H200_BF16 / (mae_gflop(*shape) * 1e9)
            print(f"| {name} | {need:,.0f} | {math.ceil(need / ref)} | {math.ceil(need / fast)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndefault (pipeline=fast) vs torchvision reference, images/s per core on ImageNet-sized photos: "
          f"{np.mean(speedups['ImageNet 500x375']):.2f}x")


if __name__ == "__main__":
    main()
