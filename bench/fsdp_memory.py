#!/usr/bin/env python
"""Per-process peak memory of MAE pretraining under strategy=ddp and strategy=fsdp, measured side by side on
N CPU processes (gloo), and the arithmetic for the sizes no CPU holds.

  python bench/fsdp_memory.py                        # ViT-L and ViT-H, 2 processes, batch 1 (~4 min, ~20 GB)
  python bench/fsdp_memory.py --models tiny --steps 2 # a smoke run (seconds)

Each (model, strategy) runs in its own `torchrun` group: the model is built, placed by the toolkit's own
strategy (engine/strategy.py: DDP, or FSDP2 per block and root), AdamW (fused) is built on it, and a few
pretraining steps run (224 px, mask ratio 0.75). Each process reports its own peak resident memory (VmHWM),
which includes everything it ever held -- the whole model it was built as before sharding, the optimizer
state, gradients, the gathered blocks and the activations; the table gives the largest over the processes.
Where two DDP processes would not fit in this machine's memory, DDP is measured on one process (no gradient
buckets: a lower bound of a DDP process) and the table says so.

Both strategies run with glibc's MALLOC_MMAP_THRESHOLD_=65536: every allocation over 64 KiB is its own mapping,
so memory a process frees leaves its resident set at once -- what a GPU's caching allocator does with the whole
model an FSDP process was built as before sharding. With glibc's default (`--default-malloc`) freed tensors
stay in the heap and the resident peak counts them on top of the shards (ViT-L: FSDP / DDP 0.64 instead of ~0.5).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = {"tiny": "mae_vit_tiny_patch8", "base": "mae_vit_base_patch16", "large": "mae_vit_large_patch16",
          "huge": "mae_vit_huge_patch14"}
# (width, depth, heads, MLP, patch): the registered giant and 2B, and MAWS's ViT-6.5B (arithmetic only)
ARITH = {"ViT-H/14": (1280, 32, 16, 5120, 14), "ViT-g/14": (1408, 40, 16, 6144, 14),
         "ViT-2B/14": (2560, 24, 32, 10240, 14), "ViT-6.5B/14": (4096, 32, 32, 16384, 14)}
DECODER = (512, 8, 16, 2048)


def _vm_hwm_gib() -> float:
    hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")]
    return int(hwm[0].split()[1]) / 2**20


def worker(a) -> None:
    """One process of a group: build, place, train `a.steps` steps, append its peak to `a.result`."""
    import torch
    from timm.optim import create_optimizer_v2

    from mae_transfer import models
    from mae_transfer.engine.distributed import cleanup, init_distributed
    from mae_transfer.engine.strategy import STRATEGIES
    from mae_transfer.rng import seeded

    info = init_distributed("cpu")
    size = 32 if a.model == "tiny" else 224
    with seeded(0):
        model = models.create_mae(MODELS[a.model], img_size=size, norm_pix_loss=True)
    strategy = STRATEGIES[a.strategy](info, "none", grad_checkpointing=a.grad_checkpointing)
    net = strategy.wrap(model)
    opt = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), fused=True)
    g = torch.Generator().manual_seed(info.rank)
    for _ in range(a.steps):
        x = torch.randn(a.batch, 3, size, size, generator=g)
        with strategy.sync(net, True):
            net(x, mask_ratio=0.75)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in model.parameters())
    with open(a.result, "a") as f:
        f.write(json.dumps({"rank": info.rank, "world": info.world_size, "peak_gib": _vm_hwm_gib(),
                            "params": params}) + "\n")
    cleanup(info)


def _available_gib() -> float:
    for ln in Path("/proc/meminfo").read_text().splitlines():
        if ln.startswith("MemAvailable"):
            return int(ln.split()[1]) / 2**20
    return float("inf")


def measure(model: str, strategy: str, procs: int, steps: int, batch: int, ckpt: bool, malloc: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        result = Path(d) / "peaks.jsonl"
        cmd = [__file__, "--worker", "--model", model, "--strategy", strategy, "--steps", str(steps),
               "--batch", str(batch), "--result", str(result)] + (["--grad-checkpointing"] if ckpt else [])
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] + cmd
        else:
            cmd = [sys.executable] + cmd
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs)), **malloc}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rows = [json.loads(x) for x in result.read_text().splitlines()]
    return {"peak_gib": max(r["peak_gib"] for r in rows), "params": rows[0]["params"], "procs": procs}


def arithmetic(gpus=(8, 64), batch: int = 64) -> str:
    """Bytes a GPU holds for MAE pretraining at 224 px, mask 0.75, bf16 compute: fp32 weights, gradients and
    AdamW moments (16 B a parameter; FSDP: /N), activations per image from the per-token count of
    Korthikanti et al. 2022 with fused attention, bf16: 2 * (8 D + 2 M) bytes a token a block, or 2 D (the
    block's input) with activation checkpointing. An estimate: no allocator slack, no CUDA context."""
    head = ("| model | params | weights+grads+AdamW, DDP | FSDP " + " | FSDP ".join(f"{n} GPUs" for n in gpus)
            + f" | activations / img | with ckpt | FSDP {gpus[0]} GPUs + ckpt, batch {batch}/GPU |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, (d, depth, _, m, p) in ARITH.items():
        L = (224 // p) ** 2
        dd, ddepth, _, dm = DECODER
        block = lambda d, m: 4 * d * d + 2 * d * m + 9 * d + m  # noqa: E731  (qkv, proj, MLP, norms, biases)
        params = depth * block(d, m) + ddepth * block(dd, dm) + p * p * 3 * d + d * dd + dd * p * p * 3
        state = 16 * params
        enc_t, dec_t = L // 4 + 1, L + 1
        act = enc_t * depth * 2 * (8 * d + 2 * m) + dec_t * ddepth * 2 * (8 * dd + 2 * dm)
        act_ck = enc_t * depth * 2 * d + dec_t * ddepth * 2 * dd + enc_t * 2 * (8 * d + 2 * m)  # + one block redone
        gb = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
        total = state / gpus[0] + batch * act_ck
        lines.append(f"| {name} | {params / 1e9:.2f}B | {gb(state)} | " + " | ".join(gb(state / n) for n in gpus)
                     + f" | {act / 2**20:.0f} MiB | {act_ck / 2**20:.0f} MiB | {gb(total)} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="large,huge", help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--default-malloc", action="store_true", help="glibc's own mmap threshold (see above)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    malloc = {} if a.default_malloc else {"MALLOC_MMAP_THRESHOLD_": "65536"}
    print(f"MAE pretraining, batch {a.batch} a process, {a.steps} steps, 224 px (tiny: 32), fp32 on CPU, "
          f"{a.procs} processes (gloo); per-process peak resident memory, the largest over the processes; "
          f"{'glibc default malloc' if a.default_malloc else 'MALLOC_MMAP_THRESHOLD_=65536'}\n")
    print("| model | params | DDP peak / process | FSDP peak / process | FSDP / DDP |")
    print("|---|---|---|---|---|")
    for name in a.models.split(","):
        fsdp = measure(name, "fsdp", a.procs, a.steps, a.batch, a.grad_checkpointing, malloc)
        # a DDP process holds 20 B a parameter (+ the gradient buckets); both at once must fit beside the rest
        need = a.procs * 20 * fsdp["params"] / 2**30 + 1.0 * a.procs
        ddp_procs = a.procs if need < 0.9 * _available_gib() else 1
        ddp = measure(name, "ddp", ddp_procs, a.steps, a.batch, a.grad_checkpointing, malloc)
        note = "" if ddp_procs == a.procs else " (1 process: 2 would not fit here; a lower bound)"
        print(f"| {MODELS[name]} | {fsdp['params'] / 1e6:.0f}M | {ddp['peak_gib']:.2f} GiB{note} | "
              f"{fsdp['peak_gib']:.2f} GiB | {fsdp['peak_gib'] / ddp['peak_gib']:.2f} |", flush=True)
    print("\nArithmetic for the sizes a CPU cannot hold (per GPU; the estimate described in arithmetic()):\n")
    print(arithmetic())


if __name__ == "__main__":
    main()
