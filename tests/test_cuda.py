"""The CUDA paths (`pytest -m cuda`, run by bench/gpu_check.py on a GPU machine; skipped elsewhere): bf16
pretraining and fine-tuning steps, DDP over NCCL, and both predictors on the GPU."""
import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_pretraining_steps(tmp_path):
    from mae_transfer.engine.config import apply_overrides, load_config, resolve_config
    from mae_transfer.engine.pretrain import PretrainConfig, train

    cfg = apply_overrides(load_config(resolve_config("demo_tiny", "pretrain"), PretrainConfig),
                          [f"output_dir={tmp_path}", "epochs=1", "demo_samples=64", "batch_size=32",
                           "effective_batch_size=32", "num_workers=2", "device=cuda", "amp=auto"])
    metrics = {}
    model = train(cfg, metrics=metrics)
    assert next(model.parameters()).is_cuda and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert "amp bf16" in (tmp_path / "run.log").read_text()


def test_bf16_finetuning_steps(tmp_path):
    from PIL import Image

    from mae_transfer.engine.config import apply_overrides
    from mae_transfer.engine.finetune import ClassifyConfig, train

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (40, 40), (40 * i, 100 if c == "a" else 200, 0)).save(tmp_path / "data" / split / c
                                                                                       / f"{i}.png")
    cfg = apply_overrides(ClassifyConfig(), [f"output_dir={tmp_path / 'out'}", f"data_path={tmp_path / 'data'}",
                                             "model=vit_tiny_patch8", "img_size=32", "num_classes=2", "epochs=1",
                                             "batch_size=8", "effective_batch_size=8", "num_workers=2",
                                             "device=cuda", "warmup_epochs=0"])
    stats = train(cfg)
    assert 0 <= stats["acc1"] <= 100


def test_ddp_over_nccl_one_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 2).cuda(), device_ids=[0])
        model(torch.randn(4, 8, device="cuda")).sum().backward()
        assert model.module.weight.grad is not None
    finally:
        dist.destroy_process_group()


def test_predictors_on_cuda(tmp_path):
    pytest.importorskip("detectron2")
    import numpy as np
    from detectron2.config import LazyConfig, instantiate

    from mae_transfer import checkpoints
    from mae_transfer.det.predict import DetPredictor
    from mae_transfer.engine.config import resolve_config

    config = str(resolve_config("tiny_cpu", "det"))
    checkpoints.save(tmp_path / "det.pth", {"model": instantiate(LazyConfig.load(config).model).state_dict()})
    pred = DetPredictor(config, str(tmp_path / "det.pth"), "cuda", 0.0)
    (inst,) = pred([np.zeros((128, 128, 3), np.uint8)])
    assert inst.image_size == (128, 128) and inst.has("scores") and inst.has("pred_boxes")
    assert next(pred.model.parameters()).is_cuda and (len(inst) == 0 or inst.scores.is_cuda)
