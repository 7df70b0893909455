"""strategy=fsdp (FSDP2) on 2 CPU processes (gloo), run the way users run it (`--num-gpus 2 --strategy fsdp`):
the same weights as DDP, a SIGKILLed run resumed bit-identical, checkpoints that move between world sizes,
and a checkpoint-last.pth every other command reads."""
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_mid_epoch, merged
from PIL import Image

from mae_transfer import checkpoints

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "mae_transfer"]
# 4 optimizer steps an epoch (64 images, 16 a step: 2 processes x 8, or 1 x 8 x accum 2), 8 in all; clipping on
# so that the norm over all shards is tested too; a checkpoint every step (what a SIGKILL leaves).
TINY = ["img_size=32", "demo_samples=64", "batch_size=8", "effective_batch_size=16", "epochs=2", "warmup_epochs=1",
        "num_workers=1", "vis_freq=100", "save_freq=100", "blr=1e-3", "clip_grad=0.05", "ckpt_every_steps=1",
        "model_kwargs={'depth': 4}"]


def _pretrain(out, *extra, procs=2, strategy="fsdp", check=True):
    cmd = CLI + ["pretrain", "--output-dir", str(out), "--strategy", strategy, *merged(TINY, extra)]
    cmd += ["--num-gpus", str(procs)] if procs > 1 else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    _pretrain(d / "fsdp")
    _pretrain(d / "ddp", strategy="ddp")
    return d


def _model(run: Path):
    return checkpoints.load_file(run / "checkpoint-last.pth")["model"]


def _losses(run: Path):
    return [json.loads(x)["train_loss"] for x in (run / "log.txt").read_text().splitlines()]


def _close(a, b, atol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.mark.slow
def test_fsdp_and_ddp_pretraining_give_the_same_weights(runs):
    ck = checkpoints.load_file(runs / "fsdp" / "checkpoint-last.pth")
    assert ck["sharded"] == "shards/step-000000008" and ck["world_size"] == 2 and ck["step"] == 8
    assert "optimizer" not in ck and ck["model_args"]["kwargs"]["depth"] == 4
    # the mid-epoch folders are gone; the kept last epoch (checkpoint-1.pth) has its own (hard links)
    assert sorted(p.name for p in (runs / "fsdp" / "shards").iterdir()) == ["checkpoint-1", "step-000000008"]
    assert checkpoints.load_file(runs / "fsdp" / "checkpoint-1.pth")["sharded"] == "shards/checkpoint-1"
    assert not (runs / "ddp" / "shards").exists()
    _close(_model(runs / "fsdp"), _model(runs / "ddp"))
    np.testing.assert_allclose(_losses(runs / "fsdp"), _losses(runs / "ddp"), rtol=1e-5)
    assert _losses(runs / "fsdp")[1] < _losses(runs / "fsdp")[0]


def _optimizer_state(run: Path):
    """The sharded folder of checkpoint-last as one state dict (torch's converter)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ck = checkpoints.load_file(run / "checkpoint-last.pth")
    dcp_to_torch_save(run / ck["sharded"], run / "consolidated.pt")
    return torch.load(run / "consolidated.pt", weights_only=False)


def test_fsdp_run_killed_mid_epoch_resumes_bit_identical(runs, tmp_path):
    run = tmp_path / "killed"
    cmd = CLI + ["pretrain", "--output-dir", str(run), "--strategy", "fsdp", "--num-gpus", "2", *TINY]
    at = random.randrange(1, 7)
    st = kill_mid_epoch(cmd, run / "checkpoint-last.pth", at)
    _pretrain(run, "--resume")
    ref, got = (checkpoints.load_file(r / "checkpoint-last.pth") for r in (runs / "fsdp", run))
    assert ref["train_state"] == got["train_state"] and got["step"] == 8, (at, st)
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), (k, at, st)
    a, b = _optimizer_state(runs / "fsdp"), _optimizer_state(run)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys() and len(a["optimizer"]["state"]) > 50
    torch.testing.assert_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=0, atol=0)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert _losses(run) == _losses(runs / "fsdp")


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_fsdp_checkpoint_resumes_at_another_world_size(runs, tmp_path, first, then):
    """Stopped inside an epoch on `first` processes, finished on `then`: the weights of the uninterrupted
    2-process run (the same images per step; 1 process accumulates 2 batches of 8)."""
    run = tmp_path / "run"
    _pretrain(run, "max_steps=3" if first == 2 else "max_steps=5", procs=first)
    assert checkpoints.load_file(run / "checkpoint-last.pth")["train_state"]["batch"] > 0
    _pretrain(run, "--resume", procs=then)
    ck = checkpoints.load_file(run / "checkpoint-last.pth")
    assert ck["step"] == 8 and ck["world_size"] == then
    _close(ck["model"], _model(runs / "fsdp"))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.flag),))


def test_resume_mistakes_and_crafted_folders_are_one_line(tmp_path):
    """A world size that splits a batch; a checkpoint-last naming a folder outside its run; a folder whose
    .metadata pickle would run code (torch's own reader unpickles it whole): one error line each, nothing run."""
    run = tmp_path / "run"
    _pretrain(run, "max_steps=1", procs=1, check=True)  # 1 process, accum 2: stopped after 16 images
    r = _pretrain(run, "--resume", "batch_size=32", "effective_batch_size=32", "--allow-changes", procs=1, check=False)
    assert r.returncode == 2 and "not a whole number of" in r.stderr and "Traceback" not in r.stderr
    r = _pretrain(run, "--resume", "effective_batch_size=32", "--allow-changes", procs=1,
                  check=False)  # 16 images are half a step of 32
    assert r.returncode == 2 and "optimizer steps" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    ck = checkpoints.load_file(run / "checkpoint-last.pth")
    shard = next((run / ck["sharded"]).glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a damaged shard: one line naming the folder
    r = _pretrain(run, "--resume", procs=1, check=False)
    assert r.returncode == 2 and "cannot be loaded" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stderr[-3000:]
    shard.write_bytes(data)
    (run / "checkpoint-last.pth").rename(run / "checkpoint-0.pth")  # a run whose last checkpoint is gone
    r = _pretrain(run, "--resume", procs=1, check=False)
    assert r.returncode == 2 and "resume=" in r.stderr and "checkpoint-0.pth" in r.stderr, r.stderr[-3000:]
    assert (run / ck["sharded"]).is_dir()  # nothing deleted
    (run / "checkpoint-0.pth").rename(run / "checkpoint-last.pth")
    payload = _Payload()
    payload.flag = str(tmp_path / "PWNED")
    (run / ck["sharded"] / ".metadata").write_bytes(pickle.dumps(payload))
    r = _pretrain(run, "--resume", procs=1, check=False)
    assert r.returncode == 2 and "not part of a checkpoint folder's metadata" in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "PWNED").exists()
    checkpoints.save(run / "checkpoint-last.pth", {**ck, "sharded": "../../elsewhere"})
    r = _pretrain(run, "--resume", procs=1, check=False)
    assert r.returncode == 2 and "is not a folder under shards/" in r.stderr, r.stderr[-3000:]


def _classes(root: Path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, c in enumerate("abc"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(6):
                img = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
                img[..., k] += 150
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root


def test_fsdp_finetuning_with_layer_decay_matches_ddp(runs, tmp_path):
    """Layer-wise lr decay, no decay on norms/biases, clipping, drop path and Mixup/CutMix, evaluation on the
    sharded model: the same weights and accuracy under both strategies."""
    data = _classes(tmp_path / "data")
    out = {}
    for strategy in ("ddp", "fsdp"):
        out[strategy] = tmp_path / strategy
        r = subprocess.run(CLI + [
            "finetune", "--config", "vit_base", "--backbone", str(runs / "fsdp" / "checkpoint-last.pth"),
            "--data-path", str(data), "--output-dir", str(out[strategy]), "--num-gpus", "2", "--strategy", strategy,
            "model=vit_tiny_patch8", "img_size=32", "num_classes=3", "model_kwargs={'depth': 4}", "batch_size=4",
            "effective_batch_size=8", "epochs=2", "warmup_epochs=1", "num_workers=1", "layer_decay=0.75",
            "clip_grad=1.0", "blr=1e-2"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    _close(_model(out["ddp"]), _model(out["fsdp"]))
    res = [json.loads((out[s] / "result.json").read_text())["metrics"] for s in ("ddp", "fsdp")]
    assert res[0]["top-1"] == res[1]["top-1"]
    # linear probing: the head's BatchNorm statistics are averaged over the processes every step, so the
    # accuracy the 2-process run reports is the one its checkpoint gives when evaluated alone
    common = ["--config", "vit_base", "--data-path", str(data), "model=vit_tiny_patch8", "img_size=32",
              "num_classes=3", "model_kwargs={'depth': 4}", "batch_size=4", "num_workers=1"]
    r = subprocess.run(CLI + ["linprobe", *common, "--backbone", str(runs / "fsdp" / "checkpoint-last.pth"),
                              "--output-dir", str(tmp_path / "lp"), "--num-gpus", "2", "--strategy", "fsdp",
                              "effective_batch_size=8", "epochs=2", "warmup_epochs=1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = subprocess.run(CLI + ["linprobe", *common, "--eval-only", str(tmp_path / "lp" / "checkpoint-last.pth"),
                              "--output-dir", str(tmp_path / "lp_eval")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    trained, alone = (json.loads((tmp_path / d / "result.json").read_text())["metrics"] for d in ("lp", "lp_eval"))
    assert trained["top-1"] == alone["top-1"], (trained, alone)


def test_fsdp_checkpoint_feeds_every_command(runs, tmp_path):
    """checkpoint-last.pth of an FSDP run is one file with the whole model: convert, the masked-loss
    evaluation, fine-tuning through `evaluate` and detection read it as they read any other."""
    ck = runs / "fsdp" / "checkpoint-last.pth"
    ok = lambda *argv: subprocess.run(CLI + list(argv), capture_output=True, text=True, timeout=900)  # noqa: E731
    r = ok("convert", str(ck), "--to", "hf", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 4
    r = ok("pretrain", "--config", "demo_tiny", "--eval-only", str(ck), "--output-dir", str(tmp_path / "ev"),
           "img_size=32", "demo_samples=16", "num_workers=0")
    assert r.returncode == 0 and "masked-patch loss" in r.stdout, r.stderr[-3000:]
    data = _classes(tmp_path / "cls")
    # the suite's cpu recipe and det's tiny config build the 12-block ViT-Ti/8
    _pretrain(tmp_path / "vit_ti", "model_kwargs={}", "max_steps=2")
    vit_ti = str(tmp_path / "vit_ti" / "checkpoint-last.pth")
    r = ok("evaluate", vit_ti, "--suite", "custom", "--tasks", "linprobe", "--cls-data", str(data), "--recipe", "cpu",
           "--cls-epochs", "1", "--seeds", "1", "--output-dir", str(tmp_path / "suite"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "failed" not in (tmp_path / "suite" / "report.md").read_text().lower()
    from mae_transfer.data.synthetic import make_coco_shapes

    coco = make_coco_shapes(tmp_path / "coco", n_train=6, n_val=2)
    r = ok("det", "--backbone", vit_ti, "--config", "tiny_cpu", "--output-dir", str(tmp_path / "det"),
           "--train-json", coco["train_json"], "--train-images", coco["train_images"], "--val-json", coco["val_json"],
           "--val-images", coco["val_images"], "train.max_iter=1", "dataloader.train.total_batch_size=2",
           "dataloader.train.num_workers=0", "dataloader.test.num_workers=0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "loaded" in r.stdout + r.stderr
