"""`mae-transfer evaluate`: the report card (mae_transfer.evaluate runs the commands, reads result.json)."""
import shlex
import sys
from pathlib import Path
from typing import List

DOC = """Score one or more checkpoints (and `random`: the same ViT from random init) on classification,
detection and segmentation with fixed recipes, N seeds each; writes report.md (mean ± std, gap to
random init, failed runs), results.json and chart.png.

  mae-transfer evaluate output/pretrain/scenes_tiny/checkpoint-last.pth random --seeds 3
  mae-transfer evaluate mae_pretrain_vit_base.pth random --suite paper --arch base \\
      --imagenet /data/imagenet --ade data/ade/ADEChallengeData2016 --gpus 8 --dry-run

Suites: cpu (default; the Fashion-MNIST scenes, made under --data if missing, 2 CPU cores: ViT-Ti/8
checkpoints) and paper (ImageNet-1k, COCO 2017 under $DETECTRON2_DATASETS, ADE20K; the published
recipes and the published numbers as reference rows). Each run is `mae-transfer <task> ...` in a
subprocess; the report reads only each run's result.json. A restarted suite skips the runs that
finished and continues the others; a failed run is reported as failed and the suite goes on.
"""


def main(argv: List[str], prog: str = "mae-transfer evaluate"):
    from .common import Parser

    p = Parser(prog, DOC)
    p.add_argument("backbones", nargs="+", help="checkpoints (PATH or NAME=PATH), or 'random' for random init")
    p.add_argument("--suite", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--tasks", default="linprobe,finetune,det,seg", help="comma-separated subset")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every task and backbone")
    p.add_argument("--output-dir", default="output/evaluate")
    p.add_argument("--data", default="output/scenes", help="cpu suite: the scene set (made here if missing)")
    p.add_argument("--quick", action="store_true", help="cpu suite: a smoke budget (a few iterations a task)")
    p.add_argument("--arch", choices=["base", "large", "huge"], default="base", help="paper suite: ViT size")
    p.add_argument("--imagenet", default="data/imagenet", help="paper suite: {train,val}/<class>/*")
    p.add_argument("--ade", default="data/ade/ADEChallengeData2016", help="paper suite: ADE20K root")
    p.add_argument("--gpus", type=int, default=8, help="paper suite: GPUs a run")
    p.add_argument("--jobs", type=int, help="runs at once, 1 thread each when > 1 (default: 2 for the cpu suite "
                   "on 2 cores, 1 for the paper suite); numbers are reproducible for a given --jobs")
    p.add_argument("--dry-run", action="store_true",
                   help="check the checkpoints and data paths, print every command (and its config) and exit")
    p.add_argument("--report-only", action="store_true", help="write the report from the runs finished so far")
    a = p.parse_args(argv)

    from .. import evaluate
    from ..checkpoints import read_state_dict
    from ..data import DataError

    names = evaluate.backbone_names(a.backbones)
    for ckpt in names.values():  # unreadable: one line now (a dry run too), not after an hour of other runs
        if ckpt:
            read_state_dict(ckpt)
    if a.suite == "cpu":
        tasks = evaluate.cpu_suite(a.data, a.quick)
        reference, title = None, f"cpu suite: Fashion-MNIST scenes ({a.data}), {a.seeds} seed(s)"
    else:
        tasks = evaluate.paper_suite(a.arch, a.imagenet, a.ade, a.gpus)
        reference = {"name": f"published, MAE ViT-{a.arch[0].upper()}", "values": evaluate.REFERENCE.get(a.arch, {})}
        title = f"paper suite: ViT-{a.arch[0].upper()}, {a.seeds} seed(s)"
    wanted = a.tasks.split(",")
    unknown = set(wanted) - {t.name for t in tasks}
    if unknown:
        raise DataError(f"unknown task(s) {sorted(unknown)}; the {a.suite} suite has {[t.name for t in tasks]}")
    tasks = [t for t in tasks if t.name in wanted]
    missing = evaluate.missing_inputs(tasks)
    if missing:
        raise DataError(f"{len(missing)} data path(s) of the {a.suite} suite not found, e.g. {missing[0]}"
                        + (" (COCO is read under $DETECTRON2_DATASETS)" if missing[0].startswith("det") else ""))
    out = Path(a.output_dir)
    runs = evaluate.plan(tasks, names, range(a.seeds), out)
    if a.dry_run:
        for t in tasks:
            print(f"# {t.name}: {t.config}")
        for r in runs:
            print(shlex.join(r["argv"]))
        return
    out.mkdir(parents=True, exist_ok=True)
    jobs = a.jobs or (2 if a.suite == "cpu" else 1)
    rows = evaluate.finished(runs) if a.report_only else evaluate.execute(runs, jobs)
    evaluate.write_report(rows, out, reference, title, shlex.join(["mae-transfer", "evaluate", *argv]))
    print((out / "report.md").read_text())
    print(f"report: {out}/report.md, results.json, chart.png")
    failed = sum(r["status"] == "failed" for r in rows)
    if failed and not a.report_only:
        sys.exit(f"error: {failed} of {len(runs)} runs failed (listed in {out}/report.md; logs under {out}/runs)")
