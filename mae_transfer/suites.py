"""What `mae-transfer evaluate` runs: a suite is a list of tasks, each a command template (the toolkit's
own launcher, as a user would type it) and the data it reads. `mae_transfer.evaluate` expands a suite into
runs (backbones x seeds), executes them and writes the report.

* `cpu`: the Fashion-MNIST scenes (mae_transfer.data.scenes) on 2 CPU cores: linear probe and
  fine-tuning on the scenes' items, ViTDet Mask R-CNN and UperNet on the scenes. ViT-Ti/8 backbones.
* `paper`: ImageNet-1k, COCO 2017 and ADE20K with the published recipes (configs/), on GPUs, with the
  published numbers as reference rows.
* `custom`: the user's own sets given by path (a COCO json with or without masks, images + index masks,
  class folders) with the cpu or paper recipes; schedule lengths follow the set's size (`schedule`).
"""
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .data import DataError
from .data.images import find_images
from .data.scenes import make_scenes
from .engine.config import load_config, resolve_config
from .engine.finetune import ClassifyConfig
from .engine.pretrain import PretrainConfig
from .reading import read_classes

PY = sys.executable
CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass
class Run:
    """One run of a suite: the command a backbone's task and seed run as, and where it writes."""
    backbone: str
    task: str
    seed: int
    dir: Path
    metrics: Sequence[str]
    argv: List[str]
    checkpoint: str                 # what the backbone is ("" for random init): a run of another one is stale
    schedule: Optional[str] = None  # the budget, printed beside the plan

    @property
    def name(self) -> str:
        return f"{self.backbone} / {self.task} / seed {self.seed}"


@dataclass
class Task:
    name: str
    metrics: Sequence[str]
    config: str
    command: Callable[[str, int, Path], List[str]]  # (checkpoint or "", seed, output dir) -> argv
    inputs: Sequence[str] = ()  # the data files and folders its runs read (checked before the suite starts)
    schedule: str = ""  # how its budget was derived from the set (custom suite), printed before the runs


def missing_inputs(tasks: Sequence[Task]) -> List[str]:
    """`task: path` for every input of `tasks` that is not there."""
    return [f"{t.name}: {p}" for t in tasks for p in t.inputs if not Path(p).exists()]


def _launch(command: str, config: str, ckpt: str, seed: int, out: Path, gpus: int) -> List[str]:
    """The one grammar of every training command. `--resume`: a run stopped half-way continues where it
    was when the suite is restarted (a fresh directory starts fresh)."""
    return [PY, "-m", "mae_transfer", command, "--config", config, "--backbone", ckpt, "--output-dir", str(out),
            "--seed", str(seed), "--num-gpus", str(gpus), "--resume"]


def classify_task(name: str, config: str, data: str, extra: Sequence[str] = (), gpus: int = 1) -> Task:
    def command(ckpt, seed, out):
        return _launch(name, config, ckpt, seed, out, gpus) + ["--data-path", data, *extra]
    return Task(name, ("top-1",), config, command, [f"{data}/train", f"{data}/val"])


def det_task(config: str, data: Optional[Dict[str, str]], extra: Sequence[str] = (), gpus: int = 1) -> Task:
    """`data`: a COCO-format set by path; None: COCO 2017 under $DETECTRON2_DATASETS (detectron2's layout)."""
    coco = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "coco"
    inputs = list(data.values()) if data else [str(coco / f"annotations/instances_{s}2017.json")
                                               for s in ("train", "val")]
    paths = [] if data is None else ["--train-json", data["train_json"], "--train-images", data["train_images"],
                                     "--val-json", data["val_json"], "--val-images", data["val_images"]]

    def command(ckpt, seed, out):
        return _launch("det", config, ckpt, seed, out, gpus) + [*paths, *extra]
    return Task("det", ("box AP", "mask AP"), config, command, inputs)


def seg_task(config: str, data: Sequence[str], extra: Sequence[str] = (), gpus: int = 1) -> Task:
    """`data`: the seg command's data options (`--data-root DIR` or `--train-images DIR ...`)."""
    def command(ckpt, seed, out):
        return _launch("seg", config, ckpt, seed, out, gpus) + [*data, *extra]
    return Task("seg", ("mIoU",), config, command, [v for k, v in zip(data[::2], data[1::2]) if k.startswith("--")])


def cpu_suite(data_root: str, quick: bool = False) -> List[Task]:
    """The scene set at `data_root` (made by mae_transfer.data.scenes); `quick`: a smoke budget."""

    root = Path(data_root)
    n_train, n_val = (40, 10) if quick else (2000, 200)
    if not (root / "annotations" / "val.json").is_file():
        make_scenes(root, *((n_train, n_val, 128, 0, None, 20) if quick else (n_train, n_val)))
    sizes = tuple(len(json.loads((root / f"annotations/{s}.json").read_text())["images"]) for s in ("train", "val"))
    if sizes != (n_train, n_val):
        raise DataError(f"{root} holds {sizes[0]} / {sizes[1]} train / val scenes, not the {n_train} / {n_val} of a "
                        f"{'--quick' if quick else 'full'} suite: pass another --data (or delete it to remake it)")
    d = {k: str(root / v) for k, v in (("train_json", "annotations/train.json"), ("train_images", "train"),
                                        ("val_json", "annotations/val.json"), ("val_images", "val"))}
    seg_data = ["--train-images", str(root / "train"), "--train-masks", str(root / "masks/train"),
                "--val-images", str(root / "val"), "--val-masks", str(root / "masks/val"),
                "--classes", str(root / "classes.txt")]
    cls_quick = ["epochs=1", "warmup_epochs=0", "batch_size=32", "effective_batch_size=32"] if quick else []
    det_quick = ["train.max_iter=4", "lr_multiplier.scheduler.milestones=[2,3]", "lr_multiplier.warmup_length=0.25",
                 "dataloader.train.total_batch_size=2", "train.log_period=1"] if quick else []
    seg_quick = ["train_cfg.max_iters=4", "train_cfg.val_interval=4", "train_dataloader.batch_size=2",
                 "param_scheduler.0.end=2", "param_scheduler.1.begin=2", "param_scheduler.1.end=4",
                 "default_hooks.logger.interval=1"] if quick else []
    cfg = str(CONFIGS)
    return [classify_task("linprobe", f"{cfg}/linprobe/scenes_cpu.py", str(root / "crops"), cls_quick),
            classify_task("finetune", f"{cfg}/finetune/scenes_cpu.py", str(root / "crops"), cls_quick),
            det_task(f"{cfg}/det/tiny_cpu.py", d, det_quick),
            seg_task(f"{cfg}/seg/tiny_cpu.py", seg_data, seg_quick)]


# Published results of the recipes the paper suite runs (MAE Tables 3 and 10, ViTDet Table 3 / MAE Table 4,
# MAE Table 5): ImageNet top-1 fine-tune / linear, COCO box / mask AP, ADE20K mIoU.
REFERENCE = {
    "base": {"finetune": {"top-1": 83.6}, "linprobe": {"top-1": 68.0}, "det": {"box AP": 51.6, "mask AP": 45.9},
             "seg": {"mIoU": 48.1}},
    "large": {"finetune": {"top-1": 85.9}, "linprobe": {"top-1": 75.8}, "det": {"box AP": 55.5, "mask AP": 49.2},
              "seg": {"mIoU": 53.6}},
}


def paper_suite(arch: str, imagenet: str, ade: str, gpus: int = 8) -> List[Task]:
    """ImageNet-1k (`imagenet`/{train,val}), COCO 2017 (under $DETECTRON2_DATASETS), ADE20K (`ade`)."""
    cfg, short = str(CONFIGS), {"base": "b", "large": "l", "huge": "h"}[arch]
    det = {"huge": "mask_rcnn_vitdet_h_75ep.py"}.get(arch, f"mask_rcnn_vitdet_{short}_100ep.py")
    tasks = [classify_task("linprobe", f"{cfg}/linprobe/vit_{arch}.py", imagenet, gpus=gpus),
             classify_task("finetune", f"{cfg}/finetune/vit_{arch}.py", imagenet, gpus=gpus),
             det_task(f"{cfg}/det/{det}", None, gpus=gpus)]
    if arch != "huge":  # no ViT-H UperNet recipe in the paper
        tasks.append(seg_task(f"{cfg}/seg/mae_vit_{arch}_upernet_160k_ade20k.py", ["--data-root", ade], gpus=gpus))
    return tasks


# ------------------------------------------------------------------------------------- custom suite
@dataclass(frozen=True)
class Recipe:
    """The custom suite's recipes: the cpu suite's or the paper's configs, and what their schedules
    amount to in epochs of their own sets, so that a set of another size gets the same number of
    passes over its images. Each epochs value below is derived in its comment."""
    pretrain: str
    linprobe: str
    finetune: str
    det: str
    seg: str
    det_batch: int
    det_epochs: float
    det_warmup: float  # fraction of the schedule
    seg_batch: int
    seg_epochs: float
    seg_warmup: float
    gpus: int = 1


RECIPES = {
    "cpu": Recipe(
        "scenes_tiny", "linprobe/scenes_cpu.py", "finetune/scenes_cpu.py", "det/tiny_cpu.py", "seg/tiny_cpu.py",
        det_batch=4, det_epochs=2.0,     # 1000 iters * 4 images/iter / 2000 scenes
        det_warmup=0.02,                 # 20 of 1000 iters
        seg_batch=8, seg_epochs=0.6,     # 150 iters * 8 images/iter / 2000 scenes
        seg_warmup=0.1),                 # 15 of 150 iters
    "paper": Recipe(
        "mae_vit_base", "linprobe/vit_base.py", "finetune/vit_base.py", "det/mask_rcnn_vitdet_b_100ep.py",
        "seg/mae_vit_base_upernet_160k_ade20k.py",
        det_batch=64, det_epochs=100.0,  # 184375 iters * 64 images/iter / 118000 images (ViTDet's 100 ep)
        det_warmup=250 / 184375,
        seg_batch=16, seg_epochs=126.7,  # 160000 iters * 16 images/iter / 20210 ADE20K images
        seg_warmup=1500 / 160000, gpus=8),
}
# ViTDet's learning-rate steps at 88.9 % and 96.3 % of the schedule (163889 and 177546 of 184375)
DET_STEPS = (163889 / 184375, 177546 / 184375)


def iterations(n_images: int, epochs: float, batch: int) -> int:
    """ceil(images x epochs / batch), at least 3 (ViTDet's step schedule needs two steps inside it)."""
    return max(3, math.ceil(n_images * epochs / batch))


def det_schedule(n_images: int, epochs: float, r: Recipe) -> List[str]:
    it = iterations(n_images, epochs, r.det_batch)
    m1 = min(max(1, round(it * DET_STEPS[0])), it - 2)
    m2 = min(max(m1 + 1, round(it * DET_STEPS[1])), it - 1)
    return [f"train.max_iter={it}", f"lr_multiplier.scheduler.milestones=[{m1},{m2}]",
            f"lr_multiplier.scheduler.num_updates={it}", f"lr_multiplier.warmup_length={r.det_warmup:.6g}"]


def seg_schedule(n_images: int, epochs: float, r: Recipe) -> List[str]:
    it = iterations(n_images, epochs, r.seg_batch)
    warm = min(max(1, round(it * r.seg_warmup)), it - 1)
    return [f"train_cfg.max_iters={it}", f"train_cfg.val_interval={it}", f"param_scheduler.0.end={warm}",
            f"param_scheduler.1.begin={warm}", f"param_scheduler.1.end={it}"]


def epoch_schedule(c, n_images: int, epochs: Optional[int], gpus: int = 1) -> List[str]:
    """An epoch-based recipe `c` (pretraining, fine-tuning, linear probing) on a set of `n_images`: its own
    epochs (or `epochs`, its warm-up scaled alike); a set smaller than 4 of its batches gets batches of a
    quarter of the set, so an epoch has 4 steps (at most the recipe's batch a device, the rest by gradient
    accumulation; the lr follows the batch by the paper's rule, lr = blr * batch / 256)."""
    out = []
    if epochs is not None:
        out += [f"epochs={epochs}", f"warmup_epochs={round(c.warmup_epochs * epochs / c.epochs)}"]
    if n_images < 4 * c.effective_batch_size:
        per_gpu = min(c.batch_size, max(1, n_images // 4 // gpus))
        accum = max(1, n_images // 4 // (per_gpu * gpus))
        out += [f"batch_size={per_gpu}", f"effective_batch_size={per_gpu * gpus * accum}"]
    return out


@dataclass
class CustomData:
    """The custom suite's sets, by path; a task whose set is not given is left out."""
    det_train_json: Optional[str] = None
    det_train_images: Optional[str] = None
    det_val_json: Optional[str] = None
    det_val_images: Optional[str] = None
    seg_train_images: Optional[str] = None
    seg_train_masks: Optional[str] = None
    seg_val_images: Optional[str] = None
    seg_val_masks: Optional[str] = None
    seg_classes: Optional[str] = None
    cls_data: Optional[str] = None


def _group(data: CustomData, prefix: str) -> Optional[Dict[str, str]]:
    """The options of one task: all of them, or none (a task left out); some of them is a DataError."""

    group = {k[len(prefix):]: v for k, v in vars(data).items() if k.startswith(prefix)}
    given = [k for k, v in group.items() if v]
    if given and len(given) < len(group):
        lack = ", ".join(f"--{prefix}{k}".replace("_", "-") for k, v in group.items() if not v)
        raise DataError(f"the custom suite's {prefix.rstrip('_')} set also needs {lack}")
    return group if given else None


def _count(path: str, what: str) -> int:
    if not Path(path).is_dir():
        raise DataError(f"{what}: {path} is not a folder")
    return len(find_images(path))


def custom_suite(data: CustomData, recipe: str = "cpu", cls_epochs: Optional[int] = None,
                 det_epochs: Optional[float] = None, seg_epochs: Optional[float] = None,
                 gpus: Optional[int] = None) -> List[Task]:
    """The tasks whose sets are given, each with its budget derived from its set's size (`Task.schedule`)."""

    r = RECIPES[recipe]
    if gpus:
        r = replace(r, gpus=gpus)
    cfg, tasks = str(CONFIGS), []
    cls = data.cls_data
    if cls:
        n = _count(f"{cls}/train", "--cls-data")
        classes = sorted(p.name for p in Path(cls, "train").iterdir() if p.is_dir())
        if len(classes) < 2:
            raise DataError(f"--cls-data: {cls}/train holds {len(classes)} class folder(s); 2 or more are needed")
        for name in ("linprobe", "finetune"):
            config = f"{cfg}/{getattr(r, name)}"
            c = load_config(config, ClassifyConfig)
            extra = [f"num_classes={len(classes)}", *epoch_schedule(c, n, cls_epochs, r.gpus)]
            t = classify_task(name, config, cls, extra, r.gpus)
            t.schedule = f"{n} train images, {len(classes)} classes: " + " ".join(extra)
            tasks.append(t)
    det = _group(data, "det_")
    if det:
        from .det.data import check_coco_json  # detectron2: an optional host, imported when a det set is given

        n = 0  # (a missing file is reported with the other inputs; the contents are checked now, also by
        for split in ("train", "val"):  # --dry-run, rather than after minutes of pretraining)
            if Path(det[f"{split}_json"]).is_file():
                js = check_coco_json(det[f"{split}_json"], det[f"{split}_images"])
                n = len(js["images"]) if split == "train" else n
        e = r.det_epochs if det_epochs is None else det_epochs
        extra = det_schedule(n, e, r)
        t = det_task(f"{cfg}/{r.det}", det, extra, r.gpus)
        t.schedule = f"{n} train images x {e:g} epochs / {r.det_batch} a step: " + " ".join(extra)
        tasks.append(t)
    seg = _group(data, "seg_")
    if seg:
        if Path(seg["classes"]).is_file():
            read_classes(seg["classes"])  # a duplicate name is found now, not after the pretraining
        n = _count(seg["train_images"], "--seg-train-images")
        e = r.seg_epochs if seg_epochs is None else seg_epochs
        extra = seg_schedule(n, e, r)
        opts = ["--train-images", seg["train_images"], "--train-masks", seg["train_masks"],
                "--val-images", seg["val_images"], "--val-masks", seg["val_masks"], "--classes", seg["classes"]]
        t = seg_task(f"{cfg}/{r.seg}", opts, extra, r.gpus)
        t.schedule = f"{n} train images x {e:g} epochs / {r.seg_batch} a step: " + " ".join(extra)
        tasks.append(t)
    if not tasks:
        raise DataError("the custom suite needs at least one set: --det-train-json ..., --seg-train-images ... "
                        "or --cls-data")
    return tasks


def pretrain_run(recipe: str, images: str, out: Path, epochs: Optional[int] = None,
                 gpus: Optional[int] = None) -> Run:
    """`--pretrain-on`: an MAE pretrained on the user's unlabelled images with the recipe's pretraining
    config (its epochs, or `epochs` with the warm-up scaled alike), before the suite's runs."""

    config = resolve_config(RECIPES[recipe].pretrain, "pretrain")
    c = load_config(config, PretrainConfig)
    e, gpus = c.epochs if epochs is None else epochs, gpus or RECIPES[recipe].gpus
    n = _count(images, "--pretrain-on")
    extra = [*epoch_schedule(c, n, e, gpus), f"save_freq={e}", f"vis_freq={e}"]
    argv = [PY, "-m", "mae_transfer", "pretrain", "--config", str(config), "--data-path", images, "--output-dir",
            str(out), "--seed", "0", "--num-gpus", str(gpus), "--resume", *extra]
    return Run("MAE (own images)", "pretrain", 0, out, ("train_loss",), argv, str(out / "checkpoint-last.pth"),
               f"{n} unlabelled images x {e} epochs: " + " ".join(extra)
               + " (seed 0: one pretrained model serves every seed)")
