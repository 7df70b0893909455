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
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

NAME = "result.json"
TASKS = ("pretrain", "finetune", "linprobe", "det", "seg")
_FIELDS = {"task": str, "status": str, "error": (str, type(None)), "metrics": dict, "seed": (int, type(None)),
           "threads": int, "world_size": int, "config": (str, type(None)), "checkpoint": (dict, type(None)),
           "output_dir": str, "argv": list, "started": str, "ended": str}


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
    out = Path(record.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{NAME}.tmp"
    tmp.write_text(json.dumps(record.as_dict(error), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, out / NAME)
    return out / NAME


@contextlib.contextmanager
def recorded(task: str, output_dir, config=None, seed=None, checkpoint=None) -> Iterator[Record]:
    """Run the block and write result.json: status ok with the metrics, or failed with the error line
    (the exception is re-raised for the command's own one-line report)."""
    rec = Record(task, output_dir, config, seed, checkpoint)
    try:
        yield rec
    except BaseException as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        with contextlib.suppress(OSError):
            write(rec, f"{type(e).__name__}: {line}" if not isinstance(e, (KeyboardInterrupt, SystemExit)) else line)
        raise
    write(rec)


# files by which a folder is known to hold a run: the toolkit's, detectron2's and mmengine's
RUN_MARKERS = (NAME, "checkpoint-last.pth", "last_checkpoint")


def check_fresh(output_dir, resume: bool) -> None:
    """An output directory holds one run: starting afresh where a run already wrote is refused (its
    results would be overwritten); `resume` continues it instead."""
    from .engine.config import ConfigError

    found = [m for m in RUN_MARKERS if (Path(output_dir) / m).is_file()]
    if found and not resume:
        raise ConfigError(f"{output_dir} already holds a run ({found[0]}): pass --resume to continue it, "
                          f"or choose another --output-dir")


_LOCK = ".lock"
LOCK_ENV = "MAE_TRANSFER_LOCKED"  # given by a launcher holding the lock to the processes it starts


SETTINGS = "settings.json"


def settings(config, seed, model=None, backbone=None, data=()) -> Dict[str, Optional[str]]:
    """What a resumed run must share with its first start (`check_settings`), as text; paths absolute."""
    def where(x):
        return str(Path(x).resolve()) if x else None
    return {"config": where(config), "seed": None if seed is None else str(seed), "model": model,
            "backbone": where(backbone), "data": ", ".join(where(d) for d in data if d) or None}


def check_settings(output_dir, resume: bool, run: Optional[Dict[str, Optional[str]]],
                   allow_changes: bool) -> None:
    """A run is continued with the settings it was started with: `run` (seed, model, data, ...) is
    written to <dir>/settings.json when the run starts; a `--resume` with other values is refused (naming
    them) unless `allow_changes`, which records the new values as the run's. `run`: from `settings`."""
    from .engine.config import ConfigError

    if run is None:
        return
    path, now = Path(output_dir) / SETTINGS, dict(run)
    then = {}
    if resume and path.is_file():
        with contextlib.suppress(ValueError):
            then = json.loads(path.read_text())
    if then and now.get("backbone") is None:  # left out on resume: the run continues from its own checkpoint
        now["backbone"] = then.get("backbone")
    changed = [f"{k} {then[k]} -> {v}" for k, v in now.items() if k in then and then[k] != v]
    if changed and not allow_changes:
        raise ConfigError(f"{output_dir} holds a run started with other settings ({'; '.join(changed)}): "
                          f"resume it with its own, or add --allow-changes to go on with the new ones")
    tmp = path.with_name(f".{SETTINGS}.tmp")
    tmp.write_text(json.dumps(now, indent=1) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def claim(output_dir, resume: bool, run: Optional[Dict[str, Optional[str]]] = None,
          allow_changes: bool = False) -> Iterator[None]:
    """Make `output_dir` this run's for the block: an exclusive lock (lockf on <dir>/.lock, released by the
    OS when the process dies, so a killed run can be resumed at once), then `check_fresh`. A second run on
    the same directory is one error naming the holder; a resumed run must keep its settings
    (`check_settings`). One process of a job locks: rank 0 under torchrun,
    or the launcher that starts the others (torchrun processes it starts get MAE_TRANSFER_LOCKED)."""
    import fcntl

    from .engine.config import ConfigError

    out = Path(output_dir)
    if os.environ.get(LOCK_ENV) == str(out.resolve()) or os.environ.get("RANK", "0") != "0":
        check_fresh(out, resume)
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / _LOCK, "a+")
    except OSError as e:
        raise ConfigError(f"cannot write to the output directory {out}: {e.strerror}") from None
    with f:
        try:  # a POSIX record lock: not inherited by forked loader workers, gone when this process dies
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ConfigError(f"{out} is in use by another run ({f.read().strip() or 'another process'}); wait "
                              f"for it to end, or choose another --output-dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(sys.argv)}\n")
        f.flush()
        check_fresh(out, resume)
        for stale in out.glob(".*.tmp"):  # half-written files of a run killed mid-write (we hold the lock)
            stale.unlink()
        check_settings(out, resume, run, allow_changes)
        yield  # the lock goes with the file, closed here or by the OS


def validate(obj: Any) -> List[str]:
    """What keeps `obj` from being a result.json of the one schema ([] when it is one)."""
    if not isinstance(obj, dict):
        return ["not a JSON object"]
    problems = [f"missing {k}" for k in _FIELDS if k not in obj]
    problems += [f"{k}: {type(obj[k]).__name__}" for k, t in _FIELDS.items() if k in obj and not isinstance(obj[k], t)]
    if obj.get("task") not in TASKS:
        problems.append(f"task {obj.get('task')!r} not one of {TASKS}")
    if obj.get("status") not in ("ok", "failed"):
        problems.append(f"status {obj.get('status')!r}")
    if obj.get("status") == "failed" and not obj.get("error"):
        problems.append("failed without an error line")
    for k, v in (obj.get("metrics") or {}).items():
        if not (v is None or (isinstance(v, (int, float)) and math.isfinite(v))):
            problems.append(f"metric {k}: {v!r}")
    ck = obj.get("checkpoint")
    if isinstance(ck, dict) and set(ck) != {"path", "sha256"}:
        problems.append(f"checkpoint: keys {sorted(ck)}")
    return problems


def read(output_dir) -> Dict[str, Any]:
    """A run's result.json, checked against the schema; ValueError says what is wrong."""
    path = Path(output_dir) / NAME
    obj = json.loads(path.read_text())
    problems = validate(obj)
    if problems:
        raise ValueError(f"{path}: not a result file: {'; '.join(problems)}")
    return obj
