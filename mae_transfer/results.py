"""`result.json`: the one result file of every training or evaluation command, one schema for all tasks.

    {"task": "det", "status": "ok" | "failed", "error": null | "the error line",
     "metrics": {"box AP": 5.9, "mask AP": 5.7, ...},      # a metric that cannot be measured is null
     "seed": 0, "threads": 2, "world_size": 1,
     "config": "/abs/configs/det/tiny_cpu.py", "checkpoint": {"path": "...", "sha256": "..."} | null,
     "output_dir": "...", "argv": [...], "started": "2026-12-02T06:00:00+00:00", "ended": "..."}

The report card (`mae-transfer evaluate`) reads nothing else. (Not `metrics.json`: detectron2 writes
its own event log under that name.)"""
import contextlib
import datetime
import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from . import outputs, reading, schemas
from .errors import UserError

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
        try:  # a resumed run that finds nothing left to do keeps the metrics its first part measured
            prev = read(output_dir)
            self.previous = prev["metrics"] if prev["status"] == "ok" and prev["task"] == task else {}
        except (OSError, ValueError):
            self.previous = {}

    def as_dict(self, error: Optional[str]) -> Dict[str, Any]:
        ckpt = None
        if self.checkpoint and Path(self.checkpoint).is_file():
            ckpt = {"path": str(Path(self.checkpoint).resolve()), "sha256": sha256(self.checkpoint)}
        elif self.checkpoint:
            ckpt = {"path": str(self.checkpoint), "sha256": None}
        return {"task": self.task, "status": "failed" if error else "ok", "error": error,
                "metrics": _finite(self.metrics or self.previous), "seed": self.seed,
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


@contextlib.contextmanager
def recorded(task: str, output_dir, config=None, seed=None, checkpoint=None) -> Iterator[Record]:
    """Run the block and write result.json: status ok with the metrics, or failed with the error line of a run
    that could not finish (the exception is re-raised for the command's own one-line report). A user error is a
    refusal, not a run: it writes no result file."""

    rec = Record(task, output_dir, config, seed, checkpoint)
    try:
        yield rec
    except UserError:  # a refusal, not a run that failed: no result file (the folder is left as it was)
        raise
    except BaseException as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        with contextlib.suppress(OSError):
            write(rec, f"{type(e).__name__}: {line}" if not isinstance(e, (KeyboardInterrupt, SystemExit)) else line)
        raise
    write(rec)


def model_name(cfg) -> str:
    """A training config's model as `settings` records it: its name and the sizes it overrides."""
    return cfg.model + (f" {cfg.model_kwargs}" if cfg.model_kwargs else "")


def settings(config, seed, model=None, backbone=None, data=()) -> Dict[str, Optional[str]]:
    """What a resumed run must share with its first start (`check_settings`), as text; paths absolute."""
    def where(x):  # a URL, a `pipe:` command or a brace pattern of them is kept as given
        return (x if str(x).startswith("pipe:") or "://" in str(x) else str(Path(x).resolve())) if x else None
    return {"config": where(config), "seed": None if seed is None else str(seed), "model": model,
            "backbone": where(backbone), "data": ", ".join(where(d) for d in data if d) or None}


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
