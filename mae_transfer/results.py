"""`result.json`: the one result file of every training or evaluation command, one schema for all tasks.

    {"task": "det", "status": "ok" | "failed", "error": null | "the error line",
     "metrics": {"box AP": 5.9, "mask AP": 5.7, ...},      # a metric that cannot be measured is null
     "seed": 0, "threads": 2, "world_size": 1,
     "config": "/abs/configs/det/tiny_cpu.py", "checkpoint": {"path": "...", "sha256": "..."} | null,
     "output_dir": "...", "argv": [...], "started": "2026-12-02T06:00:00+00:00", "ended": "..."}

The report card (`mae-transfer evaluate`) reads nothing else. (Not `metrics.json`: detectron2 writes
its own event log under that name.)"""
import ast
import contextlib
import dataclasses
import datetime
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from . import outputs, reading, schemas
from .errors import RunFailed, UserError

NAME = "result.json"
TASKS = schemas.TASKS


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finite(metrics: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """float or None ("not measurable"): never NaN, which JSON cannot hold and a reader would take as 0."""
    out = {}
    for k, v in metrics.items():
        v = None if v is None else float(v)
        out[k] = v if v is not None and math.isfinite(v) else None
    return out


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def _world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


class Record:
    """What a command fills in while it runs: `metrics`, and where they become known, `output_dir`
    and `checkpoint` (a path; hashed when written)."""

    def __init__(self, task: str, output_dir, config=None, seed=None, checkpoint=None):
        self.task, self.output_dir, self.config, self.seed = task, output_dir, config, seed
        self.checkpoint, self.metrics, self.started = checkpoint, {}, _now()
        self.world_size = _world()
        # the run's weights as they are before it starts, where an earlier result.json holds their record: a
        # resume that fails before it wrote any (before its first step) leaves that record as it was
        self.weights_before = _weights(output_dir) if (Path(output_dir) / NAME).is_file() else None
        try:  # a resumed run that finds nothing left to do keeps the metrics its first part measured
            prev = read(output_dir)
            done = prev["status"] == "ok" and prev["task"] == task
            self.previous, self.previous_checkpoint = (prev["metrics"], prev["checkpoint"]) if done else ({}, None)
        except (OSError, ValueError):
            self.previous, self.previous_checkpoint = {}, None

    def as_dict(self, error: Optional[str]) -> Dict[str, Any]:
        ckpt = None if self.checkpoint or self.metrics else self.previous_checkpoint
        if self.checkpoint and Path(self.checkpoint).is_file():
            ckpt = {"path": str(Path(self.checkpoint).resolve()), "sha256": sha256(self.checkpoint)}
        elif self.checkpoint:
            ckpt = {"path": str(self.checkpoint), "sha256": None}
        return {"task": self.task, "status": "failed" if error else "ok", "error": error,
                "metrics": _finite({k: v for k, v in self.metrics.items() if v is not None} or self.previous),
                "seed": self.seed,
                "threads": torch.get_num_threads(),
                "world_size": max(self.world_size, _world()),
                "config": str(Path(self.config).resolve()) if self.config else None, "checkpoint": ckpt,
                "output_dir": str(Path(self.output_dir).resolve()), "argv": list(sys.argv),
                "started": self.started, "ended": _now()}


def write(record: Record, error: Optional[str] = None) -> Optional[Path]:
    """Write result.json atomically (main process only); returns its path."""
    if _rank() != 0:
        return None
    return outputs.write_json(Path(record.output_dir) / NAME, record.as_dict(error))


def _weights(folder) -> Dict[str, tuple]:
    """Each weights file of a run folder (the toolkit's, detectron2's, mmengine's) and what identifies its bytes."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    found = {}
    for e in entries:
        if (e.name.endswith(outputs.WEIGHT_SUFFIXES) or e.name == "last_checkpoint") and e.is_file(
                follow_symlinks=False):
            st = e.stat(follow_symlinks=False)
            found[e.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


@contextlib.contextmanager
def recorded(task: str, output_dir, config=None, seed=None, checkpoint=None) -> Iterator[Record]:
    """Run the block and write result.json: status ok with the metrics, or failed with the error line of a run
    that could not finish (the exception is re-raised for the command's own one-line report: where result.json
    cannot be written either, on a full disk, the error is still the first one's). A user error is a refusal,
    not a run: it writes no result file; nor does a run that fails before it wrote any weights where an earlier
    result.json records the weights the folder holds (a resume that fails before its first step)."""

    rec = Record(task, output_dir, config, seed, checkpoint)
    try:
        yield rec
    except UserError:  # a refusal, not a run that failed: no result file (the folder is left as it was)
        raise
    except BaseException as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if rec.weights_before is None or _weights(output_dir) != rec.weights_before:
            with contextlib.suppress(OSError, UserError, RunFailed):
                write(rec, line if isinstance(e, (KeyboardInterrupt, SystemExit)) else f"{type(e).__name__}: {line}")
        raise
    write(rec)


def model_name(cfg) -> str:
    """A training config's model as `settings` records it: its name and the sizes it overrides."""
    return cfg.model + (f" {cfg.model_kwargs}" if cfg.model_kwargs else "")


# What a resumed run may change: how long it runs, and how it is spread over processes, workers and checkpoints
# (resuming at another world size, per-device batch of the same effective batch, or strategy is exact by design);
# and what `settings` records apart (seed, data, model, backbone, the folder). The rest is the run's recipe.
RESUME_MAY_CHANGE = frozenset({
    "epochs", "max_steps", "num_workers", "batch_size", "strategy", "device", "amp", "grad_checkpointing",
    "data_timeout", "ckpt_every_steps", "ckpt_every_minutes", "save_freq", "vis_freq", "eval_freq", "max_rollbacks",
    "train.max_iter", "train.checkpointer.period", "train.eval_period", "train.log_period",  # detectron2
    "dataloader.train.num_workers", "dataloader.test.num_workers", "train.device",
    "train_cfg.max_iters", "train_cfg.val_interval", "default_hooks.checkpoint.interval",  # mmengine
    "default_hooks.logger.interval", "train_dataloader.num_workers", "val_dataloader.num_workers"})
RECORDED_APART = frozenset({"seed", "data_path", "output_dir", "resume", "model", "model_kwargs", "finetune",
                            "eval_only", "train.seed", "randomness.seed", "train.output_dir", "work_dir",
                            "train.init_checkpoint"})


def recipe(cfg=None, overrides=()) -> Dict[str, str]:
    """A run's recipe as text, field by field: every field of a dataclass config (its value however it was given:
    the config file, `key=value`, or a flag; `1e-3` and `0.001` alike), or -- for a host's config tree (detectron2,
    mmengine) -- the `key=value` overrides, each value read as a Python literal where it is one."""
    if dataclasses.is_dataclass(cfg):
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    else:
        values = {}
        for o in overrides:
            k, v = o.split("=", 1)
            with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                v = ast.literal_eval(v)
            values[k] = v
    return {k: repr(v) for k, v in sorted(values.items()) if k not in RESUME_MAY_CHANGE | RECORDED_APART}


def settings(config, seed, model=None, backbone=None, data=(), recipe: Optional[Dict[str, str]] = None) -> Dict:
    """What a resumed run must share with its first start (`check_settings`), as text; paths absolute; `recipe`
    from `recipe()`."""
    def where(x):  # a URL, a `pipe:` command or a brace pattern of them is kept as given
        return (x if str(x).startswith("pipe:") or "://" in str(x) else str(Path(x).resolve())) if x else None
    return {"config": where(config), "seed": None if seed is None else str(seed), "model": model,
            "backbone": where(backbone), "data": ", ".join(where(d) for d in data if d) or None,
            "recipe": recipe or {}}


def validate(obj: Any) -> List[str]:
    """What keeps `obj` from being a result.json of the one schema ([] when it is one)."""
    try:
        reading.validate(obj, schemas.Result, ValueError, "result")
    except ValueError as e:
        return [str(e).split(": ", 1)[1]]
    return []


def read(output_dir) -> Dict[str, Any]:
    """A run's result.json, checked against the schema; ValueError says what is wrong."""
    path = Path(output_dir) / NAME
    try:
        obj = reading.parse_json(path.read_bytes(), "result")
    except ValueError as e:
        raise ValueError(f"{path}: not a result file: {e}") from None
    problems = validate(obj)
    if problems:
        raise ValueError(f"{path}: not a result file: {'; '.join(problems)}")
    return obj
