"""Fine-tuning, partial fine-tuning and linear probing: presets, layer decay, loading, resume, eval."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_read_once, assert_result, kill_mid_epoch, merged, read_counter, second_run_is_refused
from PIL import Image

from mae_transfer import checkpoints
from mae_transfer import models as M
from mae_transfer.data import DataError
from mae_transfer.engine.config import apply_overrides, load_config
from mae_transfer.engine.finetune import build_model, build_optimizer, train

ROOT = Path(__file__).resolve().parents[1]
KW = {"depth": 2}
SMALL = ["img_size=32", f"model_kwargs={KW}", "model=vit_tiny_patch8", "num_classes=3", "batch_size=6",
         "effective_batch_size=6", "epochs=2", "warmup_epochs=1", "num_workers=0", "blr=1e-3"]


def _folder(root: Path, classes=("a", "b", "c"), n=6):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
                img[..., k] += 150  # class = dominant colour
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    sd = M.mae_vit_tiny_patch8(img_size=32, depth=2).state_dict()
    checkpoints.save_official(d / "official_full.pth", sd)
    enc = {k: v for k, v in sd.items() if not k.startswith(("dec", "mask"))}
    checkpoints.save_official(d / "official_encoder.pth", enc)
    out = subprocess.run([sys.executable, str(ROOT / "tools/pretrain.py"), "--output-dir", str(d / "pre"),
                          "img_size=32", "demo_samples=32", "batch_size=16", "effective_batch_size=16", "epochs=1",
                          "num_workers=0", "vis_freq=100", f"model_kwargs={KW}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return d


def _cfg(tmp, *extra, base="configs/finetune/vit_base.py"):
    return apply_overrides(load_config(ROOT / base), SMALL + [f"output_dir={tmp}", *extra])


def test_presets_equal_published_values():
    ft = {s: load_config(ROOT / f"configs/finetune/vit_{s}.py") for s in ("base", "large", "huge")}
    assert [(c.epochs, c.blr, c.layer_decay, c.drop_path) for c in ft.values()] == [
        (100, 5e-4, 0.65, 0.1), (50, 1e-3, 0.75, 0.2), (50, 1e-3, 0.75, 0.3)]
    b = ft["base"]
    assert (b.warmup_epochs, b.min_lr, b.smoothing, b.aa, b.reprob, b.mixup, b.cutmix, b.effective_batch_size,
            b.weight_decay, b.global_pool, b.head_init_std) == (5, 1e-6, 0.1, "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0,
                                                                 1024, 0.05, True, 2e-5)
    lp = {s: load_config(ROOT / f"configs/linprobe/vit_{s}.py") for s in ("base", "large", "huge")}
    assert [c.epochs for c in lp.values()] == [90, 50, 50]
    c = lp["base"]
    assert (c.blr, c.weight_decay, c.warmup_epochs, c.effective_batch_size, c.global_pool, c.head_init_std) == (
        0.1, 0.0, 10, 16384, False, 0.01)


def test_layer_decay_matches_official_formula(tmp_path):
    cfg = _cfg(tmp_path, "model_kwargs={'depth': 4}")
    model = build_model(cfg)
    opt = build_optimizer(cfg, model, lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    num_layers = 4

    def layer_id(n):  # the official lr_decay.get_layer_id_for_vit
        if n in ("cls_token", "pos_embed") or n.startswith("patch_embed"):
            return 0
        return int(n.split(".")[1]) + 1 if n.startswith("blocks") else num_layers + 1
    for g in opt.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            assert g["lr_scale"] == pytest.approx(0.65 ** (num_layers + 1 - layer_id(n))), n
            assert (g["weight_decay"] == 0) == (p.ndim == 1 or n in ("cls_token", "pos_embed")), n


@pytest.mark.parametrize("ckpt", ["pre/checkpoint-last.pth", "official_full.pth", "official_encoder.pth"])
@pytest.mark.slow
def test_finetune_and_linprobe_from_any_checkpoint(tmp_path, data, ckpts, ckpt):
    states = lambda: (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state())  # noqa: E731
    before = states()
    stats = train(_cfg(tmp_path / "ft", f"finetune={ckpts / ckpt}", f"data_path={data}", "epochs=1"))
    # top-1 is a count of the 18 validation images: a multiple of 100/18 in [0, 100]
    assert stats["n"] == 18 and 0 <= stats["acc1"] <= 100 and abs(stats["acc1"] * 18 / 100 - round(
        stats["acc1"] * 18 / 100)) < 1e-6
    after = states()  # RandAugment, random erasing, Mixup/CutMix and drop path drew only inside seeded blocks
    assert after[:2] == before[:2] and torch.equal(after[2], before[2])
    before = checkpoints.read_state_dict(str(ckpts / ckpt))
    train(_cfg(tmp_path / "lp", f"finetune={ckpts / ckpt}", f"data_path={data}", "epochs=2",
               base="configs/linprobe/vit_base.py"))
    ck = checkpoints.load_file(tmp_path / "lp" / "checkpoint-last.pth")
    after = ck["model"]
    for k, v in after.items():
        if not k.startswith("head"):
            assert torch.equal(v, before[k]), k  # the trunk is untouched, bit for bit
    # the head was trained: the optimizer holds the head's parameters alone, each with a momentum that its
    # gradients made (a head left as initialised has none)
    heads = [v for k, v in after.items() if k.startswith("head") and "running" not in k and "num_batches" not in k]
    moments = [t for s in ck["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t) and t.ndim]
    assert moments and len(ck["optimizer"]["state"]) == len(heads) and all(map(torch.count_nonzero, moments)), \
        [k for k in after if k.startswith("head")]


def test_partial_finetuning_trains_only_last_blocks(tmp_path):
    model = build_model(_cfg(tmp_path, "finetune_last_k=1"))
    trained = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
               for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"blocks.1", "fc_norm", "head"}


@pytest.mark.slow
def test_resume_and_eval(tmp_path, data, ckpts):
    out = tmp_path / "run"
    train(_cfg(out, f"finetune={ckpts / 'official_full.pth'}", f"data_path={data}", "epochs=1"))
    stats = train(_cfg(out, f"data_path={data}", "epochs=2", "resume=auto"))  # resumes: runs epoch 2 only
    log = (out / "log.txt").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [0, 1]
    r = subprocess.run([sys.executable, str(ROOT / "tools/finetune.py"), "--eval-only",
                        str(out / "checkpoint-last.pth"), "--data-path", str(data),
                        "--output-dir", str(tmp_path / "ev"),
                        *SMALL],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"top-1 {stats['acc1']:.2f}" in r.stdout and "top-5" in r.stdout
    res = assert_result(tmp_path / "ev", "finetune", ("top-1", "top-5"))
    assert res["metrics"]["top-1"] == stats["acc1"] and res["checkpoint"]["sha256"]


@pytest.mark.slow
def test_num_gpus_reads_the_backbone_once_per_process(tmp_path, data, ckpts):
    """`--num-gpus 2`, loader workers on: the launcher peeks the backbone, each process it starts reads it once."""
    backbone = ckpts / "official_encoder.pth"
    env, log = read_counter(tmp_path, backbone)
    r = subprocess.run([sys.executable, "-m", "mae_transfer", "finetune", "--num-gpus", "2", "--backbone",
                        str(backbone), "--data-path", str(data), "--output-dir", str(tmp_path / "run"),
                        *merged(SMALL, ["epochs=1", "batch_size=2", "effective_batch_size=4", "num_workers=1"])],
                       capture_output=True, text=True, timeout=900, env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert_result(tmp_path / "run", "finetune", ("top-1",), world_size=2)
    assert_read_once(log, backbone, None, processes=2)


@pytest.mark.slow
def test_two_runs_on_one_output_dir(tmp_path, data):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mae_transfer", "finetune", "--data-path", str(data), "--output-dir", str(out), *SMALL]
    res = second_run_is_refused(cmd, cmd + ["--seed", "1"], out)
    assert res["seed"] == 0 and isinstance(res["metrics"]["top-1"], float)


def test_deeper_checkpoint_is_refused():
    sd = M.mae_vit_tiny_patch8(img_size=32, depth=3).state_dict()
    with pytest.raises(checkpoints.CheckpointError, match="deeper"):
        M.vit_tiny_patch8(img_size=32, depth=2, checkpoint={"model": sd})


def test_clear_errors(tmp_path, data):
    bad = _folder(tmp_path / "bad")
    import shutil
    shutil.rmtree(bad / "val" / "c")
    with pytest.raises(DataError, match="classes differ"):
        train(_cfg(tmp_path / "o", f"data_path={bad}"))
    with pytest.raises(DataError, match="num_classes=2"):
        train(_cfg(tmp_path / "o2", f"data_path={data}", "num_classes=2"))


@pytest.mark.slow
def test_finetune_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, data, ckpts):
    """tools/finetune.py with the ViT-B preset's Mixup/CutMix, RandAugment and drop path, a persistent
    loader worker, accumulation 2, checkpoint-last every step, SIGKILL at a random step inside an epoch."""
    args = [str(ROOT / "tools/finetune.py"), "--finetune", str(ckpts / "official_full.pth"), "--data-path", str(data),
            *merged(SMALL, ["num_workers=1", "batch_size=2", "effective_batch_size=4", "epochs=3",
                            "ckpt_every_steps=1"])]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, *args, "--output-dir", str(ref)], check=True, capture_output=True, timeout=600)
    kill_mid_epoch([sys.executable, *args, "--output-dir", str(run)], run / "checkpoint-last.pth",
                   random.randrange(2, 11))
    subprocess.run([sys.executable, *args, "--output-dir", str(run), "--resume"], check=True, capture_output=True,
                   timeout=600)
    a, b = (checkpoints.load_file(d / "checkpoint-last.pth") for d in (ref, run))
    assert a["step"] == b["step"] == 12 and a["train_state"] == b["train_state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    torch.testing.assert_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=0, atol=0)
    recs = [[json.loads(x) for x in (d / "log.txt").read_text().splitlines()] for d in (ref, run)]
    assert [(r["train_loss"], r["test_acc1"]) for r in recs[0]] == [(r["train_loss"], r["test_acc1"]) for r in recs[1]]
    assert assert_result(run, "finetune", ("top-1",))["metrics"] == assert_result(ref, "finetune")["metrics"]


def test_layer_decay_table_is_logged(tmp_path, data):
    from mae_transfer.engine.logger import lr_table
    cfg = _cfg(tmp_path, "model_kwargs={'depth': 2}")
    model = build_model(cfg)
    opt = build_optimizer(cfg, model, lr=1e-3)
    rows = lr_table(opt.param_groups, {id(p): n for n, p in model.named_parameters()}, 1e-3)
    assert [r[0] for r in rows] == pytest.approx([0.65 ** 3, 0.65 ** 2, 0.65, 1.0])
    assert rows[0][2] == "cls_token, pos_embed, patch_embed.proj" and rows[1][2] == "blocks.0"
    assert rows[-1][1] == pytest.approx(1e-3) and "head" in rows[-1][2] and "fc_norm" in rows[-1][2]
    train(_cfg(tmp_path / "run", f"data_path={data}", "epochs=1", "max_steps=1"))
    table = (tmp_path / "run/run.log").read_text().split("layer-wise lr")[1].splitlines()[1:5]
    lr = 1e-3 * 6 / 256  # blr * batch / 256
    assert [float(line.split()[1]) for line in table] == pytest.approx([lr * 0.65 ** k for k in (3, 2, 1, 0)], rel=5e-3)
