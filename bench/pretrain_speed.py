#!/usr/bin/env python
"""MAE pretraining step speed, measured side by side in one process (only ratios count here).

  .venv/bin/python bench/pretrain_speed.py            # CPU, fp32: the README table (~10 min on 2 cores)
  .venv/bin/python bench/pretrain_speed.py --gpu      # CUDA, bf16: img/s and MFU, ViT-B and ViT-L vs HF
  ... --compile                                         # adds ours + torch.compile (compiling takes minutes)

One step = forward + backward + AdamW. Variants run interleaved, round after round, on identical
weights and masks; the median step time of each is reported:
  ours     this toolkit's MaskedAutoencoderViT (+ fused AdamW)
  HF       transformers' ViTMAEForPreTraining, same configuration (+ torch's default AdamW)
  w/ [M]   ours with mask tokens fed through the encoder (paper Table 2 baseline)
Peak memory is the peak RSS (CPU) or max allocated (GPU) of a fresh process running each variant.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mae_transfer import layouts  # noqa: E402
from mae_transfer.models.mae import MaskedAutoencoderViT  # noqa: E402
from mae_transfer.models.masking import random_masking  # noqa: E402

SIZES = {  # encoder (dim, depth, heads), decoder (dim, depth, heads), patch, img
    "tiny": dict(embed_dim=192, depth=2, num_heads=3, decoder_embed_dim=128, decoder_depth=1, decoder_num_heads=4,
                 patch_size=8, img_size=64),  # --smoke only
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8,
                  patch_size=16, img_size=224),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 patch_size=16, img_size=224),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                  patch_size=16, img_size=224),
}


class WithMaskTokensInEncoder(MaskedAutoencoderViT):
    """The paper's 'w/ [M]' baseline: the encoder sees all patches, masked ones replaced by a
    learned [M] token; the decoder then needs no mask tokens of its own."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.enc_mask_token = torch.nn.Parameter(torch.zeros(1, 1, self.cls_token.shape[-1]))

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        x = self.patch_embed(imgs)  # [N, L, D]: every patch goes through the encoder
        noise = torch.rand(x.shape[:2], device=x.device) if noise is None else noise
        _, mask, ids_restore = random_masking(x, mask_ratio, noise)
        x = torch.where(mask.bool()[..., None], self.enc_mask_token.to(x.dtype), x) + self.pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore, grid=None):
        x = self.decoder_embed(x) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def hf_model(size: dict, mask_ratio: float):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(
        image_size=size["img_size"], patch_size=size["patch_size"], hidden_size=size["embed_dim"],
        num_hidden_layers=size["depth"], num_attention_heads=size["num_heads"], intermediate_size=4 * size["embed_dim"],
        decoder_hidden_size=size["decoder_embed_dim"], decoder_num_hidden_layers=size["decoder_depth"],
        decoder_num_attention_heads=size["decoder_num_heads"], decoder_intermediate_size=4 * size["decoder_embed_dim"],
        layer_norm_eps=1e-6, qkv_bias=True, mask_ratio=mask_ratio, norm_pix_loss=True, hidden_act="gelu")
    return ViTMAEForPreTraining(cfg)


def build(variant: str, size: dict, mask_ratio: float, device):
    """(model, optimizer, step(imgs, noise) -> loss) with identical initial weights."""
    torch.manual_seed(0)
    ours = MaskedAutoencoderViT(norm_pix_loss=True, **size)
    if variant == "HF":
        model = hf_model(size, mask_ratio)
        model.load_state_dict(layouts.to_hf(ours.state_dict()))
        forward = lambda imgs, noise: model(pixel_values=imgs, noise=noise).loss  # noqa: E731
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # torch's default (foreach)
    else:
        model = WithMaskTokensInEncoder(norm_pix_loss=True, **size) if variant == "w/ [M]" else ours
        model.load_state_dict(ours.state_dict(), strict=False)
        run = torch.compile(model) if variant == "ours + compile" else model
        forward = lambda imgs, noise: run(imgs, mask_ratio, noise)[0]  # noqa: E731
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    model.to(device).train()

    def step(imgs, noise):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = forward(imgs, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return model, step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(variants, size, batch, mask_ratio, rounds, device):
    """Median seconds per step of each variant, measured round-robin."""
    L = (size["img_size"] // size["patch_size"]) ** 2
    steps = {v: build(v, size, mask_ratio, device)[1] for v in variants}
    imgs = torch.randn(batch, 3, size["img_size"], size["img_size"], device=device)
    noise = torch.rand(batch, L, device=device)
    for s in steps.values():  # warm-up
        s(imgs, noise)
    times = {v: [] for v in variants}
    for _ in range(rounds):
        for v, s in steps.items():
            sync(device)
            t = time.perf_counter()
            s(imgs, noise)
            sync(device)
            times[v].append(time.perf_counter() - t)
    return {v: statistics.median(t) for v, t in times.items()}


def peak_memory(variant, size_name, batch, mask_ratio, device) -> float:
    """GiB, measured in a fresh process (memory is not noisy; a shared process would mix peaks)."""
    cmd = [sys.executable, __file__, "--_memory", json.dumps([variant, size_name, batch, mask_ratio, str(device)])]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def _memory_child(arg):
    import resource
    variant, size_name, batch, mask_ratio, device = json.loads(arg)
    device = torch.device(device)
    _, step = build(variant, SIZES[size_name], mask_ratio, device)
    L = (SIZES[size_name]["img_size"] // SIZES[size_name]["patch_size"]) ** 2
    imgs = torch.randn(batch, 3, SIZES[size_name]["img_size"], SIZES[size_name]["img_size"], device=device)
    for _ in range(2):
        step(imgs, torch.rand(batch, L, device=device))
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**30)
    else:  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over fork + exec)
        status = Path("/proc/self/status")
        hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM")] if status.exists() else []
        kib = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(kib / 2**20)


def train_flops(size: dict, batch: int, mask_ratio: float) -> float:
    """Matmul FLOPs of one training step (3 x forward), the usual MFU convention."""
    L = (size["img_size"] // size["patch_size"]) ** 2
    vis = int(L * (1 - mask_ratio)) + 1

    def blocks(d, depth, n):  # qkv + proj + mlp (8 d^2 per token... 12 d^2 params) + attention scores
        return depth * (2 * n * 12 * d * d + 4 * n * n * d)
    f = blocks(size["embed_dim"], size["depth"], vis) + blocks(size["decoder_embed_dim"], size["decoder_depth"], L + 1)
    f += 2 * L * 3 * size["patch_size"] ** 2 * size["embed_dim"]  # patch embedding (all patches)
    f += 2 * vis * size["embed_dim"] * size["decoder_embed_dim"]  # decoder embedding
    f += 2 * L * size["decoder_embed_dim"] * 3 * size["patch_size"] ** 2  # pixel prediction
    return 3 * batch * f


def table(rows, header):
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).rjust(len(h)) for c, h in zip(r, header)) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="add a torch.compile'd variant (compiles first: minutes)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU (H100 SXM: 989)")
    p.add_argument("--smoke", action="store_true", help="a toy size, one round, the first table only")
    p.add_argument("--_memory")
    a = p.parse_args()
    if a._memory:
        return _memory_child(a._memory)
    device = torch.device("cuda" if a.gpu else "cpu")
    print(f"device: {torch.cuda.get_device_name(0) if a.gpu else 'CPU'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'bf16 autocast' if a.gpu else 'fp32'}")

    # 1. this toolkit vs HF, identical model
    cases = [("base", 64 if a.gpu else 8), ("small", 256 if a.gpu else 32)] + ([("large", 64)] if a.gpu else [])
    if a.smoke:
        cases, a.rounds = [("tiny", 2)], 1
    rows = []
    for name, batch in cases:
        t = interleaved(["ours", "HF"] + (["ours + compile"] if a.compile else []), SIZES[name], batch, 0.75,
                        a.rounds, device)
        mem = {v: peak_memory(v, name, batch, 0.75, device) for v in ("ours", "HF")}
        row = [f"ViT-{name[0].upper()} dec{SIZES[name]['decoder_embed_dim']}d{SIZES[name]['decoder_depth']}", batch,
               f"{batch / t['ours']:.1f}", f"{batch / t['HF']:.1f}", f"{t['HF'] / t['ours']:.2f}x",
               f"{mem['ours']:.2f} / {mem['HF']:.2f}"]
        if a.compile:
            row.append(f"{batch / t['ours + compile']:.1f}")
        if a.gpu:
            fl = train_flops(SIZES[name], batch, 0.75)
            row += [f"{100 * fl / t[k] / (a.peak_tflops * 1e12):.1f}%" for k in ("ours", "HF")]
        rows.append(row)
    hdr = ["model", "batch", "ours img/s", "HF img/s", "ours / HF", "peak GiB ours / HF"]
    table(rows, hdr + (["ours + compile img/s"] if a.compile else []) + (["MFU ours", "MFU HF"] if a.gpu else []))
    if a.smoke:
        return

    # 2. the asymmetric design: encoder on visible patches vs mask tokens through the encoder
    print()
    batch = 32 if a.gpu else 4
    t = interleaved(["ours", "w/ [M]"], SIZES["large"], batch, 0.75, max(3, a.rounds - 2), device)
    table([["ViT-L dec512d8, mask 0.75", batch, f"{batch / t['ours']:.2f}", f"{batch / t['w/ [M]']:.2f}",
            f"{t['w/ [M]'] / t['ours']:.2f}x"]],
          ["model", "batch", "ours img/s", "w/ [M] img/s", "speed-up (paper: 3.3x for ViT-L dec8)"])

    # 3. img/s against mask ratio (small ViT)
    print()
    rows = []
    batch = 256 if a.gpu else 32
    for r in (0.5, 0.6, 0.75, 0.85, 0.9):
        t = interleaved(["ours"], SIZES["small"], batch, r, 3, device)
        rows.append([r, f"{batch / t['ours']:.1f}"])
    table(rows, ["mask ratio", "ViT-S img/s"])

    # 4. the data pipeline, one core: decode + RandomResizedCrop + flip + tensor
    print()
    plain, ours = pipeline_rates()
    table([[f"{plain:.0f}", f"{ours:.0f}", f"{ours / plain:.2f}x"]],
          ["plain PIL + torchvision img/s/core", "mae_transfer pipeline img/s/core", "ratio"])


def pipeline_rates(n: int = 200):
    """Decode+crop throughput on ImageNet-sized JPEGs (500 x 375, made from the demo photos)."""
    import tempfile

    from PIL import Image
    from torchvision import transforms

    from mae_transfer.data import SeededSamples, demo_photos, pretrain_transform
    from mae_transfer.data.images import ImageDataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        for i, im in enumerate(demo_photos()[:10]):
            im.resize((500, 375), Image.BICUBIC).save(f"{d}/{i}.jpg", quality=90)
        files = sorted(Path(d).glob("*.jpg"))
        tf = pretrain_transform(224)
        plain_tf = transforms.Compose([  # what the official main_pretrain.py does per image
            transforms.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        ds = SeededSamples(ImageDataset(d), tf, extras=[lambda g: torch.rand(196, generator=g)])
        rates = []
        for fn in (lambda i: plain_tf(Image.open(files[i % len(files)]).convert("RGB")), lambda i: ds[i % len(ds)]):
            fn(0)
            t = time.perf_counter()
            for i in range(n):
                fn(i)
            rates.append(n / (time.perf_counter() - t))
    torch.set_num_threads(threads)
    return rates


if __name__ == "__main__":
    main()
