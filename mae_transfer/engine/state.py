"""Training checkpoints: what a run must carry to continue exactly where it stopped, written
atomically in the official MAE layout (`model`, `optimizer`, `epoch`, `scaler`, `args`) plus
`scheduler`, `step` and `train_state` (the position inside the data)."""
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import checkpoints
from ..outputs import check_fresh
from .trainer import unwrap_model

_logger = logging.getLogger("mae_transfer")


@dataclass
class TrainState:
    """Where a run stands: `batch` micro-batches of `epoch` are done, after `step` optimizer steps;
    the running sums of the epoch in progress ride along so its log line survives a restart."""
    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    n_loss: int = 0
    n_bad: int = 0
    rollbacks: int = 0

    def next_epoch(self):
        self.epoch, self.batch, self.loss_sum, self.n_loss, self.n_bad = self.epoch + 1, 0, 0.0, 0, 0


def save_checkpoint(run, extra_names=()) -> Path:
    """checkpoint-last.pth (and each of `extra_names`) from `run`'s model, optimizer, scheduler,
    scaler and state. `epoch` is the last finished epoch (-1 inside the first), as officially."""
    st = run.state
    obj = {"model": unwrap_model(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
           "epoch": st.epoch - 1, "step": st.step, "scheduler": run.scheduler.state_dict(),
           "train_state": dataclasses.asdict(st), "args": dataclasses.asdict(run.cfg),
           "model_args": getattr(unwrap_model(run.model), "model_args", None)}
    if run.scaler is not None:
        obj["scaler"] = run.scaler.state_dict()
    last = checkpoints.save(run.out / "checkpoint-last.pth", obj)
    for name in extra_names:
        checkpoints.save(run.out / name, obj)
    return last


def find_resume(output_dir: Path, resume: str) -> Optional[Path]:
    """`auto` (`--resume`): the run's own checkpoint-last if present; '' / 'none': start fresh, which
    a directory already holding a run's checkpoint refuses (its results would be overwritten); else a path."""
    last = Path(output_dir) / "checkpoint-last.pth"
    if resume in ("", "none", None):
        if last.is_file():
            check_fresh(output_dir, resume=False)
        return None
    if resume == "auto":
        return last if last.is_file() else None
    return Path(resume)


def load_checkpoint(path: Path, run) -> TrainState:
    """Model, optimizer, scheduler and scaler from `path` into `run`; returns the saved TrainState
    (for checkpoints without one: the start of the epoch after `epoch`)."""
    obj = checkpoints.load_file(path)
    unwrap_model(run.model).load_state_dict(obj["model"], strict=True)
    run.optimizer.load_state_dict(obj["optimizer"])
    if obj.get("scheduler") is not None:
        run.scheduler.load_state_dict(obj["scheduler"])
    if run.scaler is not None and "scaler" in obj:
        run.scaler.load_state_dict(obj["scaler"])
    if "train_state" in obj:
        return TrainState(**obj["train_state"])
    return TrainState(epoch=obj["epoch"] + 1, step=obj.get("step", 0))


def resume(run) -> None:
    """Continue from cfg.resume (auto: the run's own checkpoint-last) if there is one."""
    path = find_resume(run.out, run.cfg.resume)
    if path is None:
        return
    run.state = load_checkpoint(path, run)
    _logger.info("resumed from %s: epoch %d, micro-batch %d, step %d", path, run.state.epoch, run.state.batch,
                 run.state.step)
