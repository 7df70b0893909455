"""Score backbones on classification, detection and segmentation with fixed recipes, N seeds each
(`mae-transfer evaluate`). Every run is the toolkit's own launcher in a subprocess -- the command a
user would type -- so a suite (mae_transfer.suites: cpu, paper, custom) is exactly a list of commands:
`--dry-run` prints it, and a finished run (its `result.json`) is not run again when the suite is restarted.
"""
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from . import outputs, results
from .suites import Run, Task

RANDOM = "random"  # the backbone name that means "same ViT, random init"


def backbone_names(backbones: Sequence[str]) -> Dict[str, str]:
    """Report name -> checkpoint path ("" for random init). `NAME=PATH` names a checkpoint; otherwise
    its file stem is its name, made unique."""
    out = {}
    for b in backbones:
        if "=" in b and not Path(b).exists():
            name, b = b.split("=", 1)
        else:
            name = "random init" if b == RANDOM else Path(b.rstrip("/")).stem
        base, k = name, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out[name] = "" if b == RANDOM else b
    return out


def plan(tasks: Sequence[Task], backbones: Dict[str, str], seeds: Sequence[int], out: Path) -> List[Run]:
    """Every run of the suite: seed-major, so after seed 0 every task has a number for every backbone.
    Each backbone has its own folder (names that read alike, `a b` and `a_b`, get distinct ones)."""
    folders: Dict[str, str] = {}
    for name in backbones:
        base = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
        slug, k = base, 2
        while slug in folders.values():
            slug, k = f"{base}-{k}", k + 1
        folders[name] = slug
    runs = []
    for seed in seeds:
        for task in tasks:
            for name, ckpt in backbones.items():
                d = out / "runs" / folders[name] / task.name / f"seed{seed}"
                runs.append(Run(name, task.name, seed, d, task.metrics, task.command(ckpt, seed, d), ckpt))
    return runs


def _error_line(log: Path) -> Optional[str]:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    return next((x for x in reversed(lines) if x.startswith(("error:", "internal error:"))), None)


def _run(r: Run, env: Dict[str, str]) -> Optional[str]:
    """One run in a subprocess, its output in run.log; None when it succeeded, else the reason."""
    r.dir.mkdir(parents=True, exist_ok=True)
    with open(outputs.private(r.dir / "run.log"), "w") as f:  # a hard-linked copy's log stays its own
        f.write(shlex.join(r.argv) + "\n")
        f.flush()
        rc = subprocess.run(r.argv, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        lines = (r.dir / "run.log").read_text(errors="replace").strip().splitlines() or [""]
        line = _error_line(r.dir / "run.log") or lines[-1]  # the command's own line
        return f"failed ({rc}): {r.name}: {line} (log: {f.name})"
    return None


def done(run: Run) -> bool:
    try:
        return results.read(run.dir)["status"] == "ok"
    except (OSError, ValueError):
        return False


def stale(run: Run) -> bool:
    """The run's folder holds a run of another checkpoint than the row's now (a file replaced under the same
    name): its numbers are not this checkpoint's, so the run starts again."""
    ckpt = run.checkpoint
    try:
        started = results.read(run.dir)["checkpoint"]
    except (OSError, ValueError):
        return False
    if not ckpt or not Path(ckpt).is_file() or started is None or not started.get("sha256"):
        return False
    return started["sha256"] != results.sha256(ckpt)


def retire(run: Run) -> None:
    """Move a stale run's folder aside (kept, renamed) so the row runs afresh."""
    d = run.dir
    aside = d.with_name(f"{d.name}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    d.rename(aside)
    print(f"{run.name}: its checkpoint changed since that run; "
          f"running again (the old run: {aside})", file=sys.stderr)


def execute(runs: List[Run], jobs: int = 1) -> List[dict]:
    """Run what has no successful result.json yet (a progress bar over the runs); a failed run is
    reported and the others go on. `jobs` > 1 runs that many at once with 1 thread each: these models are
    too small to keep 2 threads busy (ViTDet-Ti: 2 one-thread runs side by side do 1.29x the iterations
    of one two-thread run on 2 cores, measured). The thread count can change the floating-point order, so
    a run's numbers are reproducible for a given --jobs (recorded as `threads` in its result.json)."""

    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if jobs > 1 else {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **one_thread}
    for r in runs:
        if stale(r):
            retire(r)
    todo = [r for r in runs if not done(r)]
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", dynamic_ncols=True)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        running = {pool.submit(_run, r, env): r for r in todo}
        for fut in as_completed(running):
            r = running[fut]
            bar.set_description(f"done: {r.name}")
            failure = fut.result()
            if failure:
                bar.write(failure)
            bar.update()
    bar.close()
    return finished(runs)


def _result(run: Run) -> dict:
    """A run's row, from its result.json alone: the task's metrics, minutes and threads; a run that
    failed (or left no readable result.json) is a row with status failed and its error line."""
    row = {"backbone": run.backbone, "task": run.task, "seed": run.seed}
    try:
        res = results.read(run.dir)
    except FileNotFoundError:  # a refused run leaves no result.json: its error line is in its log
        return {**row, "status": "failed", "error": _error_line(run.dir / "run.log")
                or f"no {results.NAME} (see {run.dir / 'run.log'})"}
    except ValueError as e:
        return {**row, "status": "failed", "error": str(e)}
    if res["status"] != "ok":
        return {**row, "status": "failed", "error": res["error"]}
    t0, t1 = (datetime.datetime.fromisoformat(res[k]) for k in ("started", "ended"))
    return {**row, "status": "ok", "metrics": {m: res["metrics"][m] for m in run.metrics if m in res["metrics"]},
            "minutes": (t1 - t0).total_seconds() / 60, "threads": res["threads"]}


def finished(runs: List[Run]) -> List[dict]:
    """The rows of the runs that have run (a report while a suite is still running): ok or failed."""
    return [_result(r) for r in runs if (r.dir / results.NAME).is_file() or (r.dir / "run.log").is_file()]


def summarize(rows: List[dict]) -> Dict[str, Dict[str, dict]]:
    """backbone -> "task metric" -> {mean, std, n, values}."""
    table: Dict[str, Dict[str, dict]] = {}
    for r in rows:
        if r.get("status", "ok") != "ok":
            continue
        for metric, v in r["metrics"].items():
            if v is None:  # not measurable in this run
                continue
            table.setdefault(r["backbone"], {}).setdefault(f"{r['task']} {metric}", {"values": []})["values"].append(v)
    for cols in table.values():
        for c in cols.values():
            v = c["values"]
            c.update(mean=statistics.fmean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0, n=len(v))
    return table


def _columns(table) -> List[str]:
    order = ["linprobe top-1", "finetune top-1", "det box AP", "det mask AP", "seg mIoU"]
    present = {c for cols in table.values() for c in cols}
    return [c for c in order if c in present] + sorted(present - set(order))


def _cell(c: Optional[dict], n: int) -> str:
    """mean ± std, with its own number of runs where it differs from the row's `n`."""
    return (f"{c['mean']:.1f} ± {c['std']:.1f}" + (f" (n={c['n']})" if c["n"] != n else "")) if c else "–"


def markdown(table, reference: Optional[dict] = None, title: str = "") -> str:
    """mean ± std per backbone and column; for each pretrained backbone, its gap to random init in
    units of the larger of the two seed-to-seed stds."""
    cols = _columns(table)
    lines = ([f"**{title}**", ""] if title else []) + ["| backbone | " + " | ".join(cols) + " |",
                                                       "|---" * (len(cols) + 1) + "|"]

    for name, row in table.items():
        n = max(c["n"] for c in row.values())
        lines.append(f"| {name} (n={n}) | " + " | ".join(_cell(row.get(c), n) for c in cols) + " |")
    rnd = table.get("random init")
    for name, row in table.items():
        if rnd is None or name == "random init":
            continue
        gaps = []
        for c in cols:
            a, b = row.get(c), rnd.get(c)
            if not (a and b):
                gaps.append("–")
                continue
            d, s = a["mean"] - b["mean"], max(a["std"], b["std"])
            gaps.append(f"{d:+.1f}" + (f" ({d / s:+.1f} std)" if s > 0 else ""))
        lines.append(f"| {name} − random init | " + " | ".join(gaps) + " |")
    if reference:
        ref = {f"{t} {m}": v for t, ms in reference["values"].items() for m, v in ms.items()}
        lines.append(f"| {reference['name']} | " + " | ".join(f"{ref[c]:.1f}" if c in ref else "–" for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


def chart(table, path: Path, reference: Optional[dict] = None, title: str = "") -> None:
    """One panel per column: a bar per backbone (mean, std as error bar), the reference as a line."""
    import matplotlib  # 0.45 s of import (measured), only when the chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, names = _columns(table), list(table)
    ref = {f"{t} {m}": v for t, ms in reference["values"].items() for m, v in ms.items()} if reference else {}
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.2), squeeze=False)
    for ax, c in zip(axes[0], cols):
        means = [table[n].get(c, {}).get("mean", 0.0) for n in names]
        stds = [table[n].get(c, {}).get("std", 0.0) for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(names))])
        if c in ref:
            ax.axhline(ref[c], ls="--", color="k", lw=1, label=reference["name"])
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(c, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    outputs.write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_report(rows: List[dict], out: Path, reference: Optional[dict] = None, title: str = "",
                 command: str = "", schedules: Sequence[str] = ()) -> dict:
    """report.md (failed runs listed under the table, then how each task's budget was set), results.json
    and chart.png in `out`; returns the summary table."""
    table = summarize(rows)
    md = markdown(table, reference, title)
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        md += "\nFailed runs (not in the table):\n" + "".join(
            f"- {r['backbone']} / {r['task']} / seed {r['seed']}: {r['error']}\n" for r in failed)
    if schedules:
        md += "\nBudgets:\n" + "".join(f"- {s}\n" for s in schedules)
    if command:
        md += f"\n```\n{command}\n```\n"
    outputs.write_text(out / "report.md", md)
    outputs.write_json(out / "results.json", {"title": title, "command": command, "summary": table, "runs": rows,
                                              "reference": reference, "budgets": list(schedules)})
    if table:
        chart(table, out / "chart.png", reference, title)
    return table


def compare(det_dir: str, seg_dir: str, reference_json: str) -> str:
    """The demo's detection and segmentation results beside a saved suite report (same recipes)."""
    det, seg = results.read(det_dir)["metrics"], results.read(seg_dir)["metrics"]
    this = {f"det {k}": det[k] for k in ("box AP", "mask AP") if det.get(k) is not None}
    this.update({"seg mIoU": seg["mIoU"]} if seg.get("mIoU") is not None else {})
    cols = [c for c in ("det box AP", "det mask AP", "seg mIoU") if c in this]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
             "| this run (seed 0) | " + " | ".join(f"{this[c]:.1f}" for c in cols) + " |"]
    ref = Path(reference_json)
    if ref.is_file():
        for name, row in json.loads(ref.read_text())["summary"].items():
            n = max(r["n"] for r in row.values())
            lines.append(f"| {name}, {ref.name} (n={n}) | " + " | ".join(_cell(row.get(c), n) for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m mae_transfer.evaluate DET_DIR SEG_DIR REPORT.json (tools/demo.sh)
    print(compare(*sys.argv[1:4]))
