"""tools/evaluate_backbone.py: one command scores checkpoints of every accepted format on a tiny budget,
the same seed gives the same numbers in every host, and the report says mean ± std and the gap."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae_transfer import checkpoints
from mae_transfer import models as M
from mae_transfer.convert import convert_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOOL = str(ROOT / "tools/evaluate_backbone.py")


def _evaluate(*args, cwd=ROOT):
    r = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def scenes_quick(tmp_path_factory):
    from mae_transfer.data.scenes import make_scenes

    root = tmp_path_factory.mktemp("ev") / "scenes"
    make_scenes(root, 40, 10, items_per_class=20)
    return root


def _losses(run_dir: Path, task: str):
    if task in ("linprobe", "finetune"):
        return [json.loads(s)["train_loss"] for s in (run_dir / "log.txt").read_text().splitlines()]
    if task == "det":  # detectron2's JSONWriter
        return [json.loads(s)["total_loss"] for s in (run_dir / "metrics.json").read_text().splitlines()
                if "total_loss" in s]
    (scalars,) = run_dir.glob("*/vis_data/scalars.json")  # mmengine's
    return [json.loads(s)["loss"] for s in scalars.read_text().splitlines() if '"loss"' in s]


@pytest.mark.slow
def test_every_checkpoint_format_scores_identically(tmp_path, scenes_quick):
    torch.manual_seed(0)
    mae = M.mae_vit_tiny_patch8()  # the cpu suite's ViT-Ti/8, random weights nudged off their init
    for p in mae.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    own = tmp_path / "own.pth"
    checkpoints.save(own, {"model": mae.state_dict(), "args": {"img_size": 64}})
    formats = {"official": tmp_path / "official.pth", "timm": tmp_path / "timm.pth", "hf": tmp_path / "hf",
               "safetensors": tmp_path / "st.safetensors"}
    for target, path in formats.items():
        convert_checkpoint(own, target, path)
    out = tmp_path / "ev"
    stdout = _evaluate(own, *formats.values(), "random", "--tasks", "linprobe", "--quick", "--seeds", "1",
                       "--data", scenes_quick, "--output-dir", out)
    res = json.loads((out / "results.json").read_text())
    top1 = {r["backbone"]: r["metrics"]["top-1"] for r in res["runs"]}
    assert set(top1) == {"own", "official", "timm", "hf", "st", "random init"}
    runs = {d.name: _losses(d / "linprobe/seed0", "linprobe") for d in (out / "runs").iterdir()}
    assert all(runs[n] == runs["own"] for n in ("official", "timm", "hf", "st")), runs
    assert runs["random_init"] != runs["own"]
    assert len({top1[n] for n in ("own", "official", "timm", "hf", "st")}) == 1
    report = (out / "report.md").read_text()
    assert "| own (n=1) |" in report and "own − random init" in report and report in stdout
    assert (out / "chart.png").stat().st_size > 1000


@pytest.mark.slow
def test_same_seed_same_numbers_in_both_hosts(tmp_path, scenes_quick):
    common = ["random", "--tasks", "det,seg", "--quick", "--data", scenes_quick]  # timm's: the test above
    _evaluate(*common, "--seeds", "2", "--output-dir", tmp_path / "a")
    _evaluate(*common, "--seeds", "1", "--output-dir", tmp_path / "b")
    a = json.loads((tmp_path / "a/results.json").read_text())["runs"]
    b = json.loads((tmp_path / "b/results.json").read_text())["runs"]
    assert {r["threads"] for r in a + b} == {1}  # the cpu suite's default: 2 one-thread runs at once
    metrics = {(r["task"], r["seed"]): r["metrics"] for r in a}
    for r in b:
        assert r["metrics"] == metrics[(r["task"], r["seed"])]
    for task in ("det", "seg"):
        same0 = _losses(tmp_path / f"a/runs/random_init/{task}/seed0", task)
        assert len(same0) >= 2
        assert same0 == _losses(tmp_path / f"b/runs/random_init/{task}/seed0", task)
        assert same0 != _losses(tmp_path / f"a/runs/random_init/{task}/seed1", task)  # the seed matters


def test_paper_suite_dry_run_checks_then_prints_every_command(tmp_path, monkeypatch, capsys):
    from mae_transfer.cli import main
    from mae_transfer.models import create_encoder

    for d in ("in1k/train", "in1k/val", "ade", "d2/coco/annotations"):
        (tmp_path / d).mkdir(parents=True)
    for s in ("train", "val"):
        (tmp_path / f"d2/coco/annotations/instances_{s}2017.json").write_text("{}")
    torch.save({"model": create_encoder("vit_tiny_patch8", num_classes=0).state_dict()}, tmp_path / "ck.pth")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    argv = ["evaluate", str(tmp_path / "ck.pth"), "random", "--suite", "paper", "--arch", "large", "--seeds", "2",
            "--dry-run", "--imagenet", str(tmp_path / "in1k"), "--ade", str(tmp_path / "ade")]
    main(argv)
    lines = [s for s in capsys.readouterr().out.splitlines() if s and not s.startswith("#")]
    assert len(lines) == 2 * 4 * 2  # backbones x tasks x seeds
    assert any("configs/det/mask_rcnn_vitdet_l_100ep.py" in s and f"--backbone {tmp_path}/ck.pth" in s for s in lines)
    assert any("mae_vit_large_upernet_160k_ade20k.py" in s and f"--data-root {tmp_path}/ade" in s for s in lines)
    assert any("linprobe/vit_large.py" in s and f"--data-path {tmp_path}/in1k" in s and "--seed 1" in s for s in lines)
    assert any("--backbone ''" in s for s in lines)  # random init: no checkpoint
    # what the dry run checks: each a single error line
    (tmp_path / "in1k/val").rmdir()
    for spoil, says in [(lambda: None, "linprobe: " + str(tmp_path / "in1k/val")),
                        (lambda: (tmp_path / "ck.pth").write_bytes(b""), "ck.pth")]:
        spoil()
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and says in err[0], err


def test_backbone_folders_are_distinct_and_a_quick_set_is_not_reused(tmp_path, scenes_quick):
    from mae_transfer import evaluate, suites
    from mae_transfer.data import DataError

    names = evaluate.backbone_names(["a b=x.pth", "a_b=y.pth", "random"])
    runs = evaluate.plan(suites.cpu_suite(str(scenes_quick), quick=True)[:1], names, [0], tmp_path)
    assert len({r.dir for r in runs}) == 3
    with pytest.raises(DataError, match="not the 2000 / 200 of a full suite"):
        suites.cpu_suite(str(scenes_quick), quick=False)


def test_report_table_and_gap():
    from mae_transfer import evaluate

    runs = [{"backbone": b, "task": "det", "seed": s, "metrics": {"box AP": v}}
            for b, vals in (("mae", (10.0, 12.0, 11.0)), ("random init", (5.0, 6.0, 7.0))) for s, v in enumerate(vals)]
    md = evaluate.markdown(evaluate.summarize(runs))
    assert "| mae (n=3) | 11.0 ± 1.0 |" in md and "| random init (n=3) | 6.0 ± 1.0 |" in md
    assert "| mae − random init | +5.0 (+5.0 std) |" in md


@pytest.fixture(scope="module")
def own_sets(tmp_path_factory, scenes_quick):
    """A user's own sets on disk, as the custom suite receives them: a box-only COCO set, a 2-class
    segmentation set (object / background) and an image folder (the scenes' crops)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("own")
    for split in ("train", "val"):
        js = json.loads((scenes_quick / f"annotations/{split}.json").read_text())
        for a in js["annotations"]:
            del a["segmentation"]
        (root / f"{split}.json").write_text(json.dumps(js))
        (root / "masks" / split).mkdir(parents=True)
        for m in (scenes_quick / "masks" / split).glob("*.png"):
            Image.fromarray(np.minimum(np.asarray(Image.open(m)), 1)).save(root / "masks" / split / m.name)
    (root / "classes.txt").write_text("background\nobject\n")
    s = scenes_quick
    return ["--det-train-json", root / "train.json", "--det-train-images", s / "train",
            "--det-val-json", root / "val.json", "--det-val-images", s / "val",
            "--seg-train-images", s / "train", "--seg-train-masks", root / "masks/train",
            "--seg-val-images", s / "val", "--seg-val-masks", root / "masks/val", "--seg-classes", root / "classes.txt",
            "--cls-data", s / "crops"]


@pytest.mark.slow
def test_custom_suite_on_own_sets_with_pretraining_on_own_images(tmp_path, scenes_quick, own_sets):
    out = tmp_path / "ev"
    stdout = _evaluate("random", "--suite", "custom", *own_sets, "--tasks", "linprobe,det,seg", "--seeds", "2",
                       "--pretrain-on", scenes_quick / "train", "--pretrain-epochs", "1", "--cls-epochs", "1",
                       "--det-epochs", "0.2", "--seg-epochs", "0.4", "--output-dir", out)
    # the budgets follow the sets' sizes by the stated rule, printed and in the report
    assert "# det: 40 train images x 0.2 epochs / 4 a step: train.max_iter=3" in stdout
    assert "# seg: 40 train images x 0.4 epochs / 8 a step: train_cfg.max_iters=3" in stdout
    assert "# pretrain: 40 unlabelled images x 1 epochs: epochs=1 warmup_epochs=0 batch_size=10" in stdout
    res = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in res["runs"]} == {"ok"}
    assert {(r["backbone"], r["task"]) for r in res["runs"]} == {
        (b, t) for b in ("random init", "MAE (own images)") for t in ("linprobe", "det", "seg")}
    assert len(res["runs"]) == 12
    for b in ("random init", "MAE (own images)"):
        cols = res["summary"][b]
        assert {"det box AP", "linprobe top-1", "seg mIoU"} <= set(cols) and "det mask AP" not in cols
        assert all(c["n"] == 2 for c in cols.values())
    report = (out / "report.md").read_text()
    assert "| MAE (own images) (n=2) |" in report and " ± " in report and "det mask AP" not in report
    assert "Budgets:" in report
    # the seg runs trained 2 classes, the classification runs the crops' 10
    seg_cfg = (out / "runs/random_init/seg/seed0/tiny_cpu.py").read_text()
    assert "num_classes=2" in seg_cfg.replace(" ", "")
    assert "num_classes=10" in (out / "runs/random_init/linprobe/seed0/run.log").read_text().split("\n")[0]


def test_custom_suite_mistakes_are_one_line(tmp_path, capsys, scenes_quick):
    from mae_transfer.cli import main

    cases = [(["--suite", "custom"], "needs at least one set"),
             (["--suite", "custom", "--det-train-json", str(scenes_quick / "annotations/train.json")],
              "also needs --det-train-images"),
             (["--cls-data", str(scenes_quick / "crops")], "add --suite custom"),
             (["--suite", "custom", "--cls-data", str(tmp_path / "nothing")], "is not a folder")]
    for extra, says in cases:
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "random", "--output-dir", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and says in err[0], (extra, err)
    assert not (tmp_path / "o").exists()
