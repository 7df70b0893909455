"""detectron2 ViTDet glue: checkpoint conversion, data checks, train/eval/resume/DDP via the tool."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")
from conftest import assert_read_once, assert_result, merged, read_counter, second_run_is_refused  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

from mae_transfer import checkpoints, hosts, layouts  # noqa: E402
from mae_transfer import models as M  # noqa: E402
from mae_transfer.data.synthetic import make_coco_shapes  # noqa: E402
from mae_transfer.det.checkpoint import FRESH_OK, load_backbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/det/tiny_cpu.py")
FAST = ["train.max_iter=2", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0", "train.checkpointer.period=2", "train.log_period=1"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_shapes(tmp_path_factory.mktemp("coco"), n_train=10, n_val=4, extras=True)


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    sd = M.mae_vit_tiny_patch8().state_dict()
    enc = {k: v for k, v in sd.items() if not k.startswith(("decoder_", "mask_token"))}
    checkpoints.save_official(d / "full.pth", sd, epoch=1)
    checkpoints.save_official(d / "encoder.pth", enc)
    checkpoints.save(d / "hf.safetensors", {"model": layouts.to_hf(sd)})
    return d, sd


def _tool(*args, check=True, env=None):
    r = subprocess.run([sys.executable, str(ROOT / "tools/train_det.py"), *args], capture_output=True, text=True,
                       timeout=900, env=env)
    if check and r.returncode:
        raise AssertionError(r.stdout[-3000:] + r.stderr[-3000:])
    return r


def _train_iters(out):
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    return [r["iteration"] for r in rows if "total_loss" in r]


@pytest.mark.parametrize("name", ["full.pth", "encoder.pth", "hf.safetensors"])
def test_every_format_loads_with_no_trunk_key_missing(tiny_ckpts, name):
    d, sd = tiny_ckpts
    model = instantiate(LazyConfig.load(TINY).model)
    report = load_backbone(model, str(d / name))
    fresh_trunk = [k for k in report["fresh"] if k.startswith("backbone.net.")]
    assert fresh_trunk and all(FRESH_OK.search(k) for k in fresh_trunk)  # only rel-pos tables
    assert torch.equal(model.backbone.net.blocks[5].mlp.fc2.weight, sd["blocks.5.mlp.fc2.weight"])
    # d2's ViT has no cls token; its pos_embed keeps the cls row, as ViTDet loads it
    assert model.backbone.net.pos_embed.shape == sd["pos_embed"].shape


def test_wrong_size_backbone_is_a_clear_error(tmp_path):
    checkpoints.save_official(tmp_path / "s.pth", M.mae_vit_small_patch4(img_size=32).state_dict())
    model = instantiate(LazyConfig.load(TINY).model)
    with pytest.raises(checkpoints.CheckpointError, match="do not fit"):
        load_backbone(model, str(tmp_path / "s.pth"))


def test_vit_h_kernel_resampled_to_16():
    """ViTDet's 14 -> 16 px kernel, bicubic with half-pixel centres: a constant kernel stays exactly
    constant, and a ramp lands on the new taps' positions within 8 % of a step (PyTorch's cubic, a=-0.75, is
    not exactly linear; nearest-neighbour resampling is off by up to half a step, zeros or a transpose by more)."""
    sd = M.mae_vit_huge_patch14(img_size=28, depth=1, decoder_depth=1).state_dict()
    a, b, c = torch.randn(1280, 3, 1, 1), torch.randn(1280, 3, 1, 1), torch.randn(1280, 3, 1, 1)
    i = torch.arange(14.0)
    sd["patch_embed.proj.weight"] = a + b * i.view(14, 1) + c * i.view(1, 14)  # ramps along rows and columns
    w = hosts.adapt(sd, "detectron2", patch_size=16)[0]["backbone.net.patch_embed.proj.weight"]
    assert w.shape == (1280, 3, 16, 16)
    x = (torch.arange(16.0) + 0.5) * 14 / 16 - 0.5  # where each new tap lies on the old grid
    expected = a + b * x.view(16, 1) + c * x.view(1, 16)
    err = (w - expected)[..., 1:-1, 1:-1].abs()
    assert (err <= 0.08 * (b.abs() + c.abs())).all()
    sd["patch_embed.proj.weight"] = a.expand(1280, 3, 14, 14).clone()
    w = hosts.adapt(sd, "detectron2", patch_size=16)[0]["backbone.net.patch_embed.proj.weight"]
    torch.testing.assert_close(w, a.expand(1280, 3, 16, 16), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_eval_resume_through_the_tool(tmp_path, coco, tiny_ckpts):
    d, _ = tiny_ckpts
    data = ["--train-json", coco["train_json"], "--train-images", coco["train_images"],
            "--val-json", coco["val_json"], "--val-images", coco["val_images"]]
    out = tmp_path / "run"
    r = _tool("--backbone", str(d / "full.pth"), "--config", TINY, "--output-dir", str(out), *data, *FAST)
    assert "loaded 147 tensors into backbone.net." in r.stdout + r.stderr
    res = json.loads((out / "eval_results.json").read_text())
    assert {"bbox", "segm"} <= set(res) and "AP" in res["bbox"]
    assert assert_result(out, "det", ("box AP", "mask AP"))["metrics"]["box AP"] == res["bbox"]["AP"]
    iters = _train_iters(out)
    assert max(iters) == 1
    # resumed with other data or seed: one line, nothing touched
    val_as_train = ["--train-json", coco["val_json"], "--train-images", coco["val_images"], *data[4:]]
    for given in ([*data, "--seed", "7"], val_as_train):
        r = _tool("--config", TINY, "--output-dir", str(out), "--resume", *given, *FAST[1:], check=False)
        assert r.returncode == 2 and "started with other settings" in r.stderr, r.stderr[-2000:]
    assert _train_iters(out) == iters
    # resume: continues at iteration 2, does not start over
    r = _tool("--config", TINY, "--output-dir", str(out), "--resume", *data, *merged(FAST[1:], ["train.max_iter=4"]))
    assert "resuming at iteration 2" in r.stdout + r.stderr
    iters = _train_iters(out)
    assert max(iters) == 3 and iters.count(0) == 1
    # --eval-only on the trained model
    r = _tool("--config", TINY, "--output-dir", str(tmp_path / "ev"), "--eval-only", str(out / "model_final.pth"),
              "--val-json", coco["val_json"], "--val-images", coco["val_images"], "dataloader.test.num_workers=0")
    assert (tmp_path / "ev/eval_results.json").exists()
    ev = assert_result(tmp_path / "ev", "det", ("box AP", "mask AP"))
    assert ev["checkpoint"]["path"].endswith("model_final.pth")
    # tools/predict.py on a folder: overlays and COCO results, class names from the json
    r = subprocess.run([sys.executable, str(ROOT / "tools/predict.py"), "det", coco["val_images"], "--config", TINY,
                        "--weights", str(out / "model_final.pth"), "--classes-json", coco["val_json"],
                        "--score-thresh", "0", "--out", str(tmp_path / "pred")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    n_images = len(list(Path(coco["val_images"]).iterdir()))
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == n_images
    res = json.loads((tmp_path / "pred/coco_results.json").read_text())
    cat_ids = {c["id"] for c in json.loads(Path(coco["val_json"]).read_text())["categories"]}
    assert res and {r["category_id"] for r in res} <= cat_ids
    assert all(len(r["bbox"]) == 4 and "segmentation" in r for r in res)
    # --min-draw: an unsure model's overlays still show its best guesses; the results file keeps the threshold
    r = subprocess.run([sys.executable, "-m", "mae_transfer", "predict", "det", coco["val_images"], "--config", TINY,
                        "--weights", str(out / "model_final.pth"), "--score-thresh", "1.01", "--min-draw", "2",
                        "--output-dir", str(tmp_path / "pred2")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"0 detections >= 1.01 in {n_images} images ({2 * n_images} drawn)" in r.stdout
    assert json.loads((tmp_path / "pred2/coco_results.json").read_text()) == []


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path, coco, tiny_ckpts):
    """Two processes; the launcher checks the data and peeks the backbone, each process reads the backbone once.
    The largest seed: detectron2 seeds process 1 with seed + 1, past numpy's range (it crashed)."""
    d, _ = tiny_ckpts
    data = Path(coco["train_images"]).parent
    env, log = read_counter(tmp_path, d / "encoder.pth", data)
    _tool("--backbone", str(d / "encoder.pth"), "--config", TINY, "--output-dir", str(tmp_path / "run"),
          "--num-gpus", "2", "--seed", str(2**32 - 1), "--train-json", coco["train_json"], "--train-images",
          coco["train_images"], "--val-json", coco["val_json"], "--val-images", coco["val_images"], *FAST, env=env)
    assert (tmp_path / "run/model_final.pth").exists()
    assert_result(tmp_path / "run", "det", ("box AP",), world_size=2)
    assert_read_once(log, d / "encoder.pth", data, processes=2)


@pytest.mark.slow
def test_two_runs_on_one_output_dir(tmp_path, coco):
    data = ["--train-json", coco["train_json"], "--train-images", coco["train_images"],
            "--val-json", coco["val_json"], "--val-images", coco["val_images"]]
    cmd = [sys.executable, "-m", "mae_transfer", "det", "--config", TINY, "--output-dir", str(tmp_path), *data, *FAST]
    res = second_run_is_refused(cmd, cmd + ["--seed", "3"], tmp_path)
    assert res["seed"] == 0 and "box AP" in res["metrics"]  # det defaults to seed 0, as every recipe


@pytest.mark.slow
def test_bad_data_is_one_line(tmp_path, coco):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    r = _tool("--config", TINY, "--train-json", str(bad), "--train-images", coco["train_images"], check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "not valid JSON" in r.stderr
    js = json.loads(Path(coco["val_json"]).read_text())
    js["images"][0]["file_name"] = "nope.jpg"
    (tmp_path / "missing.json").write_text(json.dumps(js))
    r = _tool("--config", TINY, "--train-json", str(tmp_path / "missing.json"), "--train-images", coco["val_images"],
              check=False)
    assert r.returncode == 2 and "missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    js = json.loads(Path(coco["train_json"]).read_text())
    del js["annotations"][1]["segmentation"]  # one box without its mask among masked ones
    (tmp_path / "mixed.json").write_text(json.dumps(js))
    r = _tool("--config", TINY, "--train-json", str(tmp_path / "mixed.json"), "--train-images", coco["train_images"],
              check=False)
    assert r.returncode == 2 and "annotations have no mask" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _boxes_only(src, dst):
    """A detection-only copy of a COCO file: no 'segmentation', category ids 0, 5, 9 (+ the unused 7)."""
    js = json.loads(Path(src).read_text())
    ids = {1: 0, 2: 5, 3: 9, 7: 7}
    for c in js["categories"]:
        c["id"] = ids[c["id"]]
    for a in js["annotations"]:
        a.pop("segmentation", None)
        a["category_id"] = ids[a["category_id"]]
    Path(dst).write_text(json.dumps(js))
    return str(dst)


@pytest.mark.slow
def test_box_only_set_trains_and_reports_box_ap(tmp_path, coco, tiny_ckpts):
    d, _ = tiny_ckpts
    train_js = _boxes_only(coco["train_json"], tmp_path / "t.json")
    val_js = _boxes_only(coco["val_json"], tmp_path / "v.json")
    out = tmp_path / "run"
    r = _tool("--config", TINY, "--output-dir", str(out), f"train.init_checkpoint={d / 'encoder.pth'}",
              "--train-json", train_js, "--train-images", coco["train_images"],
              "--val-json", val_js, "--val-images", coco["val_images"], *FAST)
    assert "no mask head" in r.stdout + r.stderr
    assert "encoder.pth: loaded" in r.stdout + r.stderr  # the config's train.init_checkpoint is the backbone
    res = json.loads((out / "eval_results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in json"))
    assert set(res) == {"bbox"} and isinstance(res["bbox"]["AP"], float)
    assert "mask_head" not in "".join(torch.load(out / "model_final.pth", weights_only=False)["model"])
    # evaluated on a set with masks: the checkpoint decides box-only; no random mask head is scored
    _tool("--config", TINY, "--output-dir", str(tmp_path / "ev"), "--eval-only", str(out / "model_final.pth"),
          "--val-json", coco["val_json"], "--val-images", coco["val_images"], "dataloader.test.num_workers=0")
    ev = assert_result(tmp_path / "ev", "det", ("box AP",))
    assert not [k for k in ev["metrics"] if k.startswith("mask")], ev["metrics"]


def test_backbone_registry_for_yacs_configs(tiny_ckpts):
    from detectron2.config import get_cfg
    from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

    from mae_transfer.det.backbone import add_mae_vit_config
    assert "build_mae_vit_sfp_backbone" in BACKBONE_REGISTRY
    cfg = add_mae_vit_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_mae_vit_sfp_backbone"
    c = cfg.MODEL.MAE_VIT
    c.IMG_SIZE, c.PATCH_SIZE, c.PRETRAIN_IMG_SIZE, c.EMBED_DIM, c.NUM_HEADS = 128, 8, 64, 192, 3
    c.WINDOW_SIZE, c.SCALE_FACTORS, c.SQUARE_PAD = 4, [2.0, 1.0, 0.5], 128
    c.WEIGHTS = str(tiny_ckpts[0] / "full.pth")
    bb = build_backbone(cfg)
    assert list(bb.output_shape()) == ["p2", "p3", "p4", "p5"]
    feats = bb(torch.randn(1, 3, 128, 128))
    assert feats["p2"].shape == (1, 256, 32, 32)


@pytest.mark.slow
def test_converted_vit_equals_our_encoder(tiny_ckpts):
    """detectron2's ViT (global attention, zero rel-pos, no cls token as in ViTDet) computes exactly
    our encoder's blocks on the patch tokens once the checkpoint is converted."""
    d, _ = tiny_ckpts
    cfg = LazyConfig.load(TINY)
    cfg.model.backbone.net.update(img_size=64, window_block_indexes=[], drop_path_rate=0.0)
    model = instantiate(cfg.model).eval()
    load_backbone(model, str(d / "full.pth"))
    mae = M.mae_vit_tiny_patch8()
    mae.load_state_dict(checkpoints.read_state_dict(str(d / "full.pth")))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = mae.patch_embed(x) + mae.pos_embed[:, 1:]
        for blk in mae.eval().blocks:
            t = blk(t)
        ref = t.transpose(1, 2).reshape(2, 192, 8, 8)
        torch.testing.assert_close(model.backbone.net(x)["last_feat"], ref, rtol=1e-4, atol=1e-4)


def test_vitdet_h_config_equals_vitdet_value_for_value():
    """ViTDet's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_h_75ep.py, read off the reference file."""
    h = LazyConfig.load(str(ROOT / "configs/det/mask_rcnn_vitdet_h_75ep.py"))
    net = h.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.drop_path_rate) == (1280, 32, 16, 0.5)
    import inspect

    from detectron2.modeling import ViT
    assert "pretrain_img_size" not in net and inspect.signature(ViT).parameters["pretrain_img_size"].default == 224
    assert list(net.window_block_indexes) == [i for i in range(32) if i not in (7, 15, 23, 31)]
    f = h.optimizer.params.lr_factor_func
    assert (f.keywords["lr_decay_rate"], f.keywords["num_layers"]) == (0.9, 32)
    assert h.optimizer.params.overrides == {} and h.optimizer.params.weight_decay_norm is None
    assert (h.optimizer.lr, h.optimizer.weight_decay, tuple(h.optimizer.betas)) == (1e-4, 0.1, (0.9, 0.999))
    s = h.lr_multiplier
    assert h.train.max_iter == s.scheduler.num_updates == 138281
    assert list(s.scheduler.milestones) == [122916, 133159] and list(s.scheduler["values"]) == [1.0, 0.1, 0.01]
    assert (s.warmup_length, s.warmup_factor) == (250 / 184375, 0.001)  # B's fraction, as ViTDet keeps it
    b = LazyConfig.load(str(ROOT / "configs/det/mask_rcnn_vitdet_b_100ep.py"))  # loaded after H: its own values
    p = b.optimizer.params
    assert p.overrides == {"pos_embed": {"weight_decay": 0.0}} and p.weight_decay_norm == 0.0
    assert (b.train.max_iter, b.model.backbone.net.embed_dim, b.lr_multiplier.warmup_length) == (
        184375, 768, 250 / 184375)
