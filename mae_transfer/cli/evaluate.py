"""`mae-transfer evaluate`: the report card (mae_transfer.evaluate runs the commands, reads result.json)."""
import shlex
import sys
from pathlib import Path
from typing import List

from .. import evaluate, outputs, suites
from ..data import DataError
from ..identify import BACKBONES, check_backbone
from .common import Parser, number, path

DOC = """Score one or more checkpoints (and `random`: the same ViT from random init) on classification,
detection and segmentation with fixed recipes, N seeds each; writes report.md (mean ± std, gap to
random init, failed runs), results.json and chart.png.

  mae-transfer evaluate output/pretrain/scenes_tiny/checkpoint-last.pth random --seeds 3
  mae-transfer evaluate mae_pretrain_vit_base.pth random --suite paper --arch base \\
      --imagenet /data/imagenet --ade data/ade/ADEChallengeData2016 --gpus 8 --dry-run
  mae-transfer evaluate random --suite custom --pretrain-on my/unlabelled \\
      --det-train-json a/train.json --det-train-images a/train --det-val-json a/val.json --det-val-images a/val

Suites: cpu (default; the Fashion-MNIST scenes, made under --data if missing, 2 CPU cores: ViT-Ti/8
checkpoints), paper (ImageNet-1k, COCO 2017 under $DETECTRON2_DATASETS, ADE20K; the published
recipes and the published numbers as reference rows) and custom (your own sets by path, any subset of
detection / segmentation / classification, with the cpu or paper recipes; each schedule follows the
set's size: iterations = train images x the recipe's epochs / its batch, printed and set by
--det-epochs / --seg-epochs / --cls-epochs). --pretrain-on DIR first pretrains an MAE on your unlabelled
images (the recipe's pretraining config) and scores it beside the other backbones.
Each run is `mae-transfer <task> ...` in a subprocess; the report reads only each run's result.json.
A restarted suite skips the runs that finished and continues the others; a failed run is reported as
failed and the suite goes on.
"""


def main(argv: List[str], prog: str = "mae-transfer evaluate"):
    p = Parser(prog, DOC)
    p.add_argument("backbones", nargs="+", help="checkpoints (PATH or NAME=PATH), or 'random' for random init")
    p.add_argument("--suite", choices=["cpu", "paper", "custom"], default="cpu")
    p.add_argument("--tasks", default="linprobe,finetune,det,seg", help="comma-separated subset")
    p.add_argument("--seeds", type=number(1, 1000, int), default=3, help="seeds 0..N-1 for every task and backbone")
    p.add_argument("--output-dir", type=path, default="output/evaluate")
    p.add_argument("--data", default="output/scenes", help="cpu suite: the scene set (made here if missing)")
    p.add_argument("--quick", action="store_true", help="cpu suite: a smoke budget (a few iterations a task)")
    p.add_argument("--arch", choices=["base", "large", "huge"], default="base", help="paper suite: ViT size")
    p.add_argument("--imagenet", default="data/imagenet", help="paper suite: {train,val}/<class>/*")
    p.add_argument("--ade", default="data/ade/ADEChallengeData2016", help="paper suite: ADE20K root")
    p.add_argument("--gpus", type=number(1, 4096, int),
                   help="paper suite and custom --recipe paper: GPUs a run (default 8)")
    c = p.add_argument_group("custom suite: your sets by path (a task whose set is not given is left out)")
    for split in ("train", "val"):
        c.add_argument(f"--det-{split}-json", metavar="FILE", help=f"COCO {split} annotations (box-only or masks)")
        c.add_argument(f"--det-{split}-images", metavar="DIR")
    for split in ("train", "val"):
        c.add_argument(f"--seg-{split}-images", metavar="DIR")
        c.add_argument(f"--seg-{split}-masks", metavar="DIR", help="class-index PNGs named by image stem")
    c.add_argument("--seg-classes", metavar="FILE", help="one class name per line")
    c.add_argument("--cls-data", metavar="DIR", help="train/<class>/* and val/<class>/*")
    c.add_argument("--recipe", choices=["cpu", "paper"], default="cpu", help="the cpu suite's recipes (ViT-Ti/8) "
                   "or the paper's (ViT-B)")
    c.add_argument("--det-epochs", type=number(1e-3, 1e4), help="passes over the train images (cpu 2, paper 100)")
    c.add_argument("--seg-epochs", type=number(1e-3, 1e4), help="passes over the train images (cpu 0.6, paper 126.7)")
    c.add_argument("--cls-epochs", type=number(1, 1e5, int),
                   help="fine-tuning and linear-probe epochs (default: the recipe's)")
    c.add_argument("--pretrain-on", metavar="DIR", help="pretrain an MAE on these unlabelled images first and "
                   "score it too")
    c.add_argument("--pretrain-epochs", type=number(1, 1e5, int),
                   help="with --pretrain-on (default: the recipe's, cpu 100)")
    p.add_argument("--jobs", type=number(1, 256, int),
                   help="runs at once, 1 thread each when > 1 (default: 2 for the cpu suite "
                   "on 2 cores, 1 for the paper suite); numbers are reproducible for a given --jobs")
    p.add_argument("--dry-run", action="store_true",
                   help="check the checkpoints and data paths, print every command (and its config) and exit")
    p.add_argument("--report-only", action="store_true", help="write the report from the runs finished so far")
    a = p.parse_args(argv)


    custom = {k: v for k, v in vars(a).items() if k in suites.CustomData.__dataclass_fields__}
    if a.suite != "custom" and (any(custom.values()) or a.pretrain_on):
        raise DataError("--det-*, --seg-*, --cls-data and --pretrain-on are the custom suite's: add --suite custom")
    names = evaluate.backbone_names(a.backbones)
    for ckpt in names.values():  # unreadable or the wrong kind: one line now (a dry run too), not after an hour
        if ckpt:
            check_backbone(ckpt, BACKBONES[:-2], "evaluate")
    reference, out = None, Path(a.output_dir)
    if a.suite == "cpu":
        tasks = suites.cpu_suite(a.data, a.quick)
        title = f"cpu suite: Fashion-MNIST scenes ({a.data}), {a.seeds} seed(s)"
    elif a.suite == "paper":
        tasks = suites.paper_suite(a.arch, a.imagenet, a.ade, a.gpus or 8)
        reference = {"name": f"published, MAE ViT-{a.arch[0].upper()}", "values": suites.REFERENCE.get(a.arch, {})}
        title = f"paper suite: ViT-{a.arch[0].upper()}, {a.seeds} seed(s)"
    else:
        tasks = suites.custom_suite(suites.CustomData(**custom), a.recipe, a.cls_epochs, a.det_epochs, a.seg_epochs,
                                    a.gpus)
        title = f"custom suite, {a.recipe} recipe, {a.seeds} seed(s)"
    pre = a.pretrain_on and suites.pretrain_run(a.recipe, a.pretrain_on, out / "pretrain", a.pretrain_epochs, a.gpus)
    if pre:
        names[pre.backbone] = pre.checkpoint
    wanted = a.tasks.split(",")
    unknown = set(wanted) - {"linprobe", "finetune", "det", "seg"}
    if unknown:
        raise DataError(f"unknown task(s) {sorted(unknown)}; the tasks are linprobe, finetune, det, seg")
    left = [t for t in tasks if t.name in wanted]  # the custom suite has only the tasks whose sets were given
    if not left:
        raise DataError(f"none of --tasks {a.tasks} is in the {a.suite} suite ({', '.join(t.name for t in tasks)})")
    tasks = left
    missing = suites.missing_inputs(tasks)
    if missing:
        raise DataError(f"{len(missing)} data path(s) of the {a.suite} suite not found, e.g. {missing[0]}"
                        + (" (COCO is read under $DETECTRON2_DATASETS)" if missing[0].startswith("det") else ""))
    runs = evaluate.plan(tasks, names, range(a.seeds), out)
    budgets = ([f"pretrain: {pre.schedule}"] if pre else []) + [f"{t.name}: {t.schedule}" for t in tasks
                                                                    if t.schedule]
    for t in tasks:
        print(f"# {t.name}: {t.config}")
    for b in budgets:
        print(f"# {b}")
    if a.dry_run:
        for r in ([pre] if pre else []) + runs:
            print(shlex.join(r.argv))
        return
    with outputs.claim(out, markers_ok=True):  # one suite at a time in a folder; a restart continues it
        cpu = a.suite == "cpu" or (a.suite == "custom" and a.recipe == "cpu")
        jobs = a.jobs or (2 if cpu else 1)
        if pre and not a.report_only:
            evaluate.execute([pre], 1)
            if not evaluate.done(pre):
                sys.exit(f"error: pretraining on {a.pretrain_on} failed (log: {pre.dir}/run.log); the suite needs "
                         f"its checkpoint")
        rows = evaluate.finished(runs) if a.report_only else evaluate.execute(runs, jobs)
        evaluate.write_report(rows, out, reference, title, shlex.join(["mae-transfer", "evaluate", *argv]), budgets)
        print((out / "report.md").read_text())
        print(f"report: {out}/report.md, results.json, chart.png")
    failed = sum(r["status"] == "failed" for r in rows)
    if failed and not a.report_only:
        sys.exit(f"error: {failed} of {len(runs)} runs failed (listed in {out}/report.md; logs under {out}/runs)")
