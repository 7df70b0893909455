#!/usr/bin/env python
"""One prepared GPU check: the paper-size recipes on an accelerator, speed and memory beside HF's and the
published figures, in one command that fits a short device lease (~8 min on one H200).

  python bench/gpu_check.py --out bench/results/gpu               # on the GPU machine
  python bench/gpu_check.py --cpu-smoke --out /tmp/gpu_smoke      # the same steps at toy sizes on the CPU
  python bench/gpu_check.py --report bench/results/gpu/gpu_check.json   # the README tables from the JSON

Every step runs in its own subprocess with its own time limit; a failing step is recorded (status, exit
code, the tail of its output) and the next one runs. <out>/gpu_check.json holds one record per step,
<out>/gpu_check.log everything the steps printed. Steps:
  env             nvidia-smi, versions, the toolkit's env report
  cuda_tests      pytest -m cuda (bf16 pretraining and fine-tuning steps, NCCL, predictors on cuda)
  pretrain_speed  bench/pretrain_speed.py --gpu --compile: ViT-B/L, batch 64, bf16, ours (eager, compiled) vs
                  HF, img/s, MFU, peak memory, interleaved in one process
  data_path       decode + RandomResizedCrop img/s with a loader worker per core: reference and pipeline=fast
  data_device     pipeline=device: nvJPEG batch decode + crop/resize on the GPU (bench/data_speed.py --gpu)
  det, det_ckpt   ViTDet Mask R-CNN ViT-B at 1024 (configs/det/mask_rcnn_vitdet_b_100ep.py, generated COCO
                  data), 20 iterations of 1 image: s/iter and peak memory (published, A100: 0.314 s, 10.9 GB),
                  without and with activation checkpointing
  seg             UperNet ViT-B at 512 (mae_vit_base_upernet_160k_ade20k), batch 2, 20 iterations: s/iter, peak
                  memory (mmseg: 9.96 GB) and inference img/s (mmseg: 7.14)
  finetune_speed  ViT-B/16 fine-tuning steps, bf16, batch 64: img/s
  fsdp            MAE ViT-H/14 (batch 64) and ViT-2B/14 (batch 32) pretraining steps through strategy=fsdp with
                  activation checkpointing, bf16 policy: img/s, MFU (model FLOPs, recomputation not counted), peak
                  memory. On one GPU FSDP has nothing to shard (the toolkit runs the model whole); the sharded
                  path is what tests/test_fsdp.py checks on 2 CPU processes
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PUBLISHED = {"det": {"s/iter": 0.314, "peak GiB": 10.9 / 1.074}, "seg": {"peak GiB": 9.96 / 1.074, "infer img/s": 7.14}}


def steps(smoke: bool, out: Path):
    """(name, argv, time limit in s): the whole check, in order."""
    child = [PY, __file__, "--out", str(out)] + (["--cpu-smoke"] if smoke else [])
    speed = [PY, str(ROOT / "bench/pretrain_speed.py")] + (["--smoke"] if smoke else ["--gpu", "--compile"])
    return [("env", child + ["--step", "env"], 60),
            ("cuda_tests", [PY, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(ROOT / "tests")],
             150),
            ("pretrain_speed", speed, 240),
            ("data_path", child + ["--step", "data_path"], 90),
            ("data_device", child + ["--step", "data_device"], 60),
            ("det", child + ["--step", "det"], 150),
            ("det_ckpt", child + ["--step", "det_ckpt"], 150),
            ("seg", child + ["--step", "seg"], 150),
            ("finetune_speed", child + ["--step", "finetune_speed"], 90),
            ("fsdp", child + ["--step", "fsdp"], 150)]


# ------------------------------------------------------------------------------------------ child steps
def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _peak_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    status = Path("/proc/self/status")  # VmHWM: this process's own peak RSS (ru_maxrss may carry the parent's)
    hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM")] if status.exists() else []
    return (int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2**20


def step_env(smoke: bool, work: Path) -> dict:
    import torch

    from mae_transfer.env import collect_env

    print(collect_env())
    m = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        m.update(device=p.name, memory_GiB=p.total_memory / 2**30, bf16=torch.cuda.is_bf16_supported())
        print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
    return m


def step_data_path(smoke: bool, work: Path) -> dict:
    """The pretraining input pipeline with one loader worker per core, on ImageNet-sized JPEGs: the torchvision
    reference and pipeline=fast (the default), side by side."""
    import torch
    from PIL import Image

    from mae_transfer.data import SeededSamples, demo_photos, pretrain_transform
    from mae_transfer.data.fast import FastCropFlip
    from mae_transfer.data.images import ImageDataset

    (work / "jpg").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(demo_photos()[:16]):
        im.resize((500, 375), Image.BICUBIC).save(work / "jpg" / f"{i}.jpg", quality=90)
    files = ImageDataset(str(work / "jpg"))

    class Cycle(torch.utils.data.Dataset):  # the 16 files over and over: decoded anew every time
        def __len__(self):
            return 256 if smoke else 8192

        def __getitem__(self, i):
            return files[i % len(files)]

        def encoded(self, i):
            return files.encoded(i % len(files))

    workers, rates = os.cpu_count() or 1, {}
    for name, tf in (("reference", pretrain_transform(224)), ("fast", FastCropFlip(224))):
        ds = SeededSamples(Cycle(), tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers, sampler=range(len(ds)))
        it = iter(loader)
        next(it)  # workers started
        t, n = time.perf_counter(), 0
        for _, bad in it:  # (images,), replaced-image flags
            n += len(bad)
        rates[name] = n / (time.perf_counter() - t)
    return {"reference img/s": rates["reference"], "fast img/s": rates["fast"],
            "fast/reference": rates["fast"] / rates["reference"], "workers": workers}


def step_data_device(smoke: bool, work: Path) -> dict:
    """pipeline=device: batches of 256 ImageNet-sized JPEGs decoded by nvJPEG, cropped and resized on the GPU."""
    out = subprocess.run([PY, str(ROOT / "bench/data_speed.py"), "--gpu" if not smoke else "--device-smoke"],
                         capture_output=True, text=True, cwd=ROOT)
    print(out.stdout + out.stderr)
    rows = [ln.split("|") for ln in out.stdout.splitlines() if "images/s" in ln and ln.startswith("| ")]
    return {r[1].strip(): r[2].strip() for r in rows}


def _coco(work: Path, size: int, n: int):
    from mae_transfer.data.synthetic import make_coco_shapes

    return make_coco_shapes(work / "coco", n_train=n, n_val=2, size=size)


def _det(smoke: bool, work: Path, act_ckpt: bool) -> dict:
    from mae_transfer.cli import command

    data = _coco(work, 128 if smoke else 1024, 4 if smoke else 24)
    iters = 3 if smoke else 20
    out = work / ("det_ckpt" if act_ckpt else "det")
    argv = ["--config", "tiny_cpu" if smoke else "mask_rcnn_vitdet_b_100ep", "--output-dir", str(out),
            "--train-json", data["train_json"], "--train-images", data["train_images"],
            "--val-json", data["val_json"], "--val-images", data["val_images"], f"train.max_iter={iters}",
            "dataloader.train.total_batch_size=1", "train.log_period=1", f"train.checkpointer.period={iters}",
            f"model.backbone.net.use_act_checkpoint={act_ckpt}"]
    t = time.perf_counter()
    command("det")(argv)
    wall = time.perf_counter() - t
    times = [json.loads(s)["time"] for s in (out / "metrics.json").read_text().splitlines() if '"time"' in s]
    steady = times[min(5, len(times) - 1):]
    return {"s/iter": statistics.median(steady), "peak GiB": _peak_gib(), "iterations": iters, "wall s": wall,
            "activation checkpointing": act_ckpt}


def step_det(smoke, work):
    return _det(smoke, work, False)


def step_det_ckpt(smoke, work):
    return _det(smoke, work, True)


def step_seg(smoke: bool, work: Path) -> dict:
    from mae_transfer.cli import command
    from mae_transfer.data.synthetic import make_ade_shapes
    from mae_transfer.seg.predict import SegPredictor

    size, iters = (128, 3) if smoke else (512, 20)
    make_ade_shapes(work / "ade", n_train=8, n_val=4, size=size)
    out = work / "seg"
    command("seg")(["--config", "tiny_cpu" if smoke else "mae_vit_base_upernet_160k_ade20k", "--output-dir", str(out),
                    "--data-root", str(work / "ade"), f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
                    "train_dataloader.batch_size=2", f"default_hooks.checkpoint.interval={iters}",
                    "default_hooks.logger.interval=1"])
    train_peak = _peak_gib()
    (scalars,) = out.glob("*/vis_data/scalars.json")
    times = [json.loads(s)["time"] for s in scalars.read_text().splitlines() if '"loss"' in s]
    cfg = next(out.glob("*.py"))
    pred = SegPredictor(str(cfg), str(out / f"iter_{iters}.pth"), _device())
    imgs = sorted(str(p) for p in (work / "ade/images/validation").iterdir())
    pred(imgs[:1])  # warm-up
    t = time.perf_counter()
    for im in imgs:
        pred([im])
    return {"s/iter": statistics.median(times[min(5, len(times) - 1):]), "peak GiB": train_peak,
            "infer img/s": len(imgs) / (time.perf_counter() - t), "iterations": iters, "batch": 2}


def _train_steps(n: int, loss, opt, dev, autocast) -> list:
    """Seconds of each of `n` training steps: `loss()` under `autocast()`, backward, optimizer step."""
    import torch

    times = []
    for _ in range(n):
        t = time.perf_counter()
        with autocast():
            value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def step_finetune_speed(smoke: bool, work: Path) -> dict:
    import torch

    from mae_transfer import models
    from mae_transfer.engine.common import autocast, resolve_amp

    dev = torch.device(_device())
    name, batch, n = ("vit_tiny_patch8", 4, 3) if smoke else ("vit_base_patch16", 64, 20)
    model = models.create_encoder(name, num_classes=1000, drop_path_rate=0.1, **({"img_size": 64} if smoke else {}))
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    amp = resolve_amp("auto", dev)
    x = torch.randn(batch, 3, 64 if smoke else 224, 64 if smoke else 224, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    times = _train_steps(n + 2, lambda: torch.nn.functional.cross_entropy(model(x), y), opt, dev,
                         lambda: autocast(amp, dev))
    return {"img/s": batch / statistics.median(times[2:]), "batch": batch, "amp": amp, "model": name,
            "peak GiB": _peak_gib()}


def step_fsdp(smoke: bool, work: Path) -> dict:
    import torch
    from pretrain_speed import train_flops  # bench/, beside this file
    from timm.optim import create_optimizer_v2

    from mae_transfer import models
    from mae_transfer.engine.common import resolve_amp
    from mae_transfer.engine.distributed import DistInfo
    from mae_transfer.engine.strategy import FSDP
    from mae_transfer.models.sizes import ARCHS

    dev = torch.device(_device())
    amp = resolve_amp("auto", dev)
    runs = [("mae_vit_tiny_patch8_dec128d2b", 4, 64)] if smoke else [
        ("mae_vit_huge_patch14_dec512d8b", 64, 224), ("mae_vit_2b_patch14_dec512d8b", 32, 224)]
    out = {"amp": amp}
    for name, batch, size in runs:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = models.create_mae(name, img_size=size, norm_pix_loss=True).to(dev)
        strategy = FSDP(DistInfo(device=dev), amp, grad_checkpointing=True)
        net = strategy.wrap(model)
        opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), fused=True)
        x = torch.randn(batch, 3, size, size, device=dev)
        step = lambda net=net: net(x, mask_ratio=0.75)[0]  # noqa: E731  (bound now: deleted below)
        times = _train_steps(3 if smoke else 8, step, opt, dev, strategy.autocast)
        s = statistics.median(times[1:])
        short = name.split("_dec")[0].replace("mae_vit_", "")
        out[f"{short} img/s"] = batch / s
        out[f"{short} MFU"] = train_flops({**ARCHS[name], "img_size": size}, batch, 0.75) / s / 989e12
        out[f"{short} peak GiB"] = _peak_gib()
        del model, net, opt, step
    return out


# ------------------------------------------------------------------------------------------- driver
def run_all(smoke: bool, out: Path) -> list:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with open(out / "gpu_check.log", "w") as log:
        for name, argv, limit in steps(smoke, out):
            log.write(f"\n===== {name}: {' '.join(argv)}\n")
            log.flush()
            t = time.time()
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=limit, cwd=ROOT)
                rc, text = r.returncode, r.stdout + r.stderr
            except subprocess.TimeoutExpired as e:
                rc, text = None, "".join((x or b"").decode(errors="replace") for x in (e.stdout, e.stderr))
            log.write(text)
            found = [json.loads(line[8:]) for line in text.splitlines() if line.startswith("METRICS ")]
            metrics = found[-1] if found else {}
            if rc is None:
                status = "timeout"
            else:  # pytest's 5: no test collected (no CUDA here, every cuda test deselected)
                status = "ok" if rc == 0 else "skipped" if name == "cuda_tests" and rc == 5 else "failed"
            rec = {"step": name, "status": status, "rc": rc, "seconds": round(time.time() - t, 1), "metrics": metrics,
                   "command": argv, "tail": text.strip().splitlines()[-15:]}
            if name == "pretrain_speed":
                rec["tables"] = [line for line in text.splitlines() if line.startswith(("|", "device:"))]
            records.append(rec)
            print(f"{name:<15} {status:<8} {rec['seconds']:7.1f} s  {json.dumps(metrics)[:150]}", flush=True)
            (out / "gpu_check.json").write_text(json.dumps({"smoke": smoke, "steps": records}, indent=1))
    return records


def report(path: Path) -> str:
    """The README tables: each step's measurements beside the published figures."""
    data = json.loads(Path(path).read_text())
    by = {r["step"]: r for r in data["steps"]}
    dev = by.get("env", {}).get("metrics", {}).get("device", "?")
    lines = [f"Device: {dev}. Command: `python bench/gpu_check.py --out {Path(path).parent}`.", "",
             "| step | status | s | measured | published |", "|---|---|---|---|---|"]
    for r in data["steps"]:
        m = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r["metrics"].items()}
        pub = PUBLISHED.get("det" if r["step"].startswith("det") else r["step"], {})
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | "
                     f"{', '.join(f'{k} {v}' for k, v in m.items()) or '–'} | "
                     f"{', '.join(f'{k} {v:.3g}' for k, v in pub.items()) or '–'} |")
    tables = by.get("pretrain_speed", {}).get("tables", [])
    return "\n".join(lines + ([""] + tables if tables else [])) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/gpu")
    p.add_argument("--cpu-smoke", action="store_true", help="every step at toy sizes on the CPU")
    p.add_argument("--step", help=argparse.SUPPRESS)  # one step, in this child process
    p.add_argument("--report", metavar="JSON", help="print the README tables of a finished check")
    a = p.parse_args()
    if a.report:
        return print(report(Path(a.report)))
    out = Path(a.out).resolve()
    if a.step:
        m = globals()[f"step_{a.step}"](a.cpu_smoke, out / "work")
        return print("METRICS " + json.dumps(m))
    recs = run_all(a.cpu_smoke, out)
    print(report(out / "gpu_check.json"))
    sys.exit(0 if all(r["status"] in ("ok", "skipped") for r in recs) else 1)


if __name__ == "__main__":
    main()
