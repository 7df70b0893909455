#!/usr/bin/env python
"""Latency per image of the exported graphs: PyTorch eager vs torch.compile vs ONNX Runtime, measured
interleaved in one process (round after round, the same input; only ratios count on a shared machine).

  .venv/bin/python bench/export_speed.py                  # CPU: ViTDet-B 1024, UperNet-B 512, the tiny models
  .venv/bin/python bench/export_speed.py --models tiny    # the tiny CPU models only (a minute)
  .venv/bin/python bench/export_speed.py --gpu            # CUDA: eager, compile, ORT CUDA and TensorRT providers

Random weights (speed does not depend on them). The graphs are those `mae-transfer export` writes:
ViTDet's backbone + feature pyramid (batch 1, 3 x S x S; the RPN and RoI head graphs, a few % of the
FLOPs, are not timed), UperNet's encode_decode on one window. Peak
memory: VmHWM (CPU) or max allocated (GPU, torch only) of a fresh process loading and running each."""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CONFIGS = Path(__file__).resolve().parents[1] / "mae_transfer" / "configs"
MODELS = {"vitdet_b_1024": ("det", "det/mask_rcnn_vitdet_b_100ep.py"),
          "upernet_b_512": ("seg", "seg/mae_vit_base_upernet_160k_ade20k.py"),
          "vitdet_tiny_128": ("det", "det/tiny_cpu.py"), "upernet_tiny_128": ("seg", "seg/tiny_cpu.py")}


def build(name: str):
    """The exported graph (a `graphs.Part`, x -> outputs, on the CPU) with random weights, its input size."""
    from mae_transfer.export import graphs

    kind, cfg = MODELS[name]
    torch.manual_seed(0)
    if kind == "det":
        from detectron2.config import LazyConfig, instantiate

        from mae_transfer.export.det import backbone

        model = instantiate(LazyConfig.load(str(CONFIGS / cfg)).model).eval()
        size = graphs.det_size(model)
        return backbone(model, size), size
    else:
        import mae_transfer.seg  # noqa: F401  (mmcv-lite compat: before mmseg)

        # isort: split
        from mmengine.config import Config
        from mmseg.apis import init_model

        from mae_transfer.seg.data import plain_bn

        c = Config.fromfile(str(CONFIGS / cfg))
        plain_bn(c.model)
        module, size = graphs.seg_module(init_model(c, None, device="cpu"))
        return graphs.image_part(module, size, ["logits"]), size


def runtimes(name: str, folder: Path, device: str, which):
    """variant -> x -> outputs."""
    from mae_transfer.export import load_runtime, trace, write

    part, size = build(name)
    module = part.module.to(device)
    out = {}
    if "eager" in which:
        out["eager"] = lambda x: module(x)
    if "compile" in which:
        compiled = torch.compile(module)
        out["compile"] = lambda x: compiled(x)
    ort = [w for w in which if w.startswith("onnxruntime")]
    if ort:
        onnx_file = folder / f"{name}.onnx"
        if not onnx_file.is_file():
            module.cpu()
            write(trace(part), part, onnx_file, "onnx")
            module.to(device)
        for w in ort:
            out[w] = _ort(onnx_file, w) if w != "onnxruntime" else load_runtime(onnx_file, device)
    return out, size


def _ort(path, variant):
    import onnxruntime as ort
    providers = {"onnxruntime-cuda": ["CUDAExecutionProvider"],
                 "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}[variant]
    sess = ort.InferenceSession(str(path), providers=providers + ["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.detach().cpu().numpy()})


def latency(name, folder, device, which, rounds):
    fns, size = runtimes(name, folder, device, which)
    x = torch.randn(1, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        for fn in fns.values():  # warm-up (compilation, ORT's first-run allocations)
            fn(x)
            fn(x)
        times = {v: [] for v in fns}
        for _ in range(rounds):
            for v, fn in fns.items():
                sync()
                t = time.perf_counter()
                fn(x)
                sync()
                times[v].append(time.perf_counter() - t)
    return {v: statistics.median(t) for v, t in times.items()}


def peak_memory(name, folder, device, variant) -> float:
    cmd = [sys.executable, __file__, "--_memory", json.dumps([name, str(folder), device, variant])]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def _memory_child(arg):
    name, folder, device, variant = json.loads(arg)
    fns, size = runtimes(name, Path(folder), device, [variant])
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        for _ in range(2):
            fns[variant](x)
    if device == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**30)
    else:
        hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")]
        print(int(hwm[0].split()[1]) / 2**20)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all", help="all | tiny | comma-separated names: " + ", ".join(MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for minutes)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--_memory", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._memory:
        return _memory_child(a._memory)
    torch.set_num_threads(torch.get_num_threads())
    names = {"all": list(MODELS), "tiny": [n for n in MODELS if "tiny" in n]}.get(a.models, a.models.split(","))
    device = "cuda" if a.gpu else "cpu"
    which = ["eager"] + ([] if a.no_compile else ["compile"])
    which += ["onnxruntime-cuda", "onnxruntime-trt"] if a.gpu else ["onnxruntime"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t = latency(name, Path(tmp), device, which, a.rounds)
            mem = {} if a.no_memory else {v: peak_memory(name, tmp, device, v) for v in which if not
                                          (a.gpu and v.startswith("onnx"))}
            row = {"model": name, "device": device, "threads": torch.get_num_threads(),
                   "ms": {v: 1000 * s for v, s in t.items()}, "vs eager": {v: t["eager"] / s for v, s in t.items()},
                   "peak GiB": mem}
            rows.append(row)
            if a.out:  # after every model: a long run stopped half-way keeps what it measured
                Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
            print(f"{name}: " + "  ".join(f"{v} {1000 * s:.0f} ms ({t['eager'] / s:.2f}x"
                                          + (f", {mem[v]:.2f} GiB" if v in mem else "") + ")" for v, s in t.items()),
                  flush=True)
    print("\n| model | " + " | ".join(which) + " |\n|---|" + "---|" * len(which))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(
            f"{r['ms'][v]:.0f} ms ({r['vs eager'][v]:.2f}x" + (f", {r['peak GiB'][v]:.2f} GiB" if v in r["peak GiB"]
                                                              else "") + ")" for v in which) + " |")


if __name__ == "__main__":
    main()
