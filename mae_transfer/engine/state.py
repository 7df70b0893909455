"""Training checkpoints: what a run must carry to continue exactly where it stopped.

`checkpoint-last.pth` is always one file holding the whole model and its `model_args` (what det, seg,
convert, export and evaluate read), written atomically in the official MAE layout (`model`, `optimizer`,
`epoch`, `scaler`, `args`) plus `scheduler`, `step`, `train_state` (the position inside the data) and
`world_size`. Under strategy=fsdp the optimizer (and the model again, sharded) are saved instead by every
process in parallel with `torch.distributed.checkpoint` into `shards/step-N/`, which the file names in
`sharded`; that folder loads at any world size (resharded as it is read), so a run moves from 2 processes
to 1, or from 8 to 64, with its optimizer state. The position inside an epoch is kept as images seen by
all processes together and turned back into this run's micro-batches on resume."""
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from .. import checkpoints
from ..checkpoints import CheckpointError
from ..errors import RunFailed
from ..models.mae import training_args
from ..outputs import check_fresh
from ..reading import validate
from ..schemas import RunCheckpoint
from .distributed import barrier

_logger = logging.getLogger("mae_transfer")
SHARDS = "shards"


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
    segments: list = dataclasses.field(default_factory=list)  # how a sharded epoch was split so far (data/order.py)

    def next_epoch(self):
        self.epoch, self.batch, self.loss_sum, self.n_loss, self.n_bad = self.epoch + 1, 0, 0.0, 0, 0
        self.segments = []


def save_checkpoint(tr, extra_names=()) -> Optional[Path]:
    """checkpoint-last.pth (and each of `extra_names`) from trainer `tr`; called by every process (the
    sharded state and the whole model are gathered collectively), written by rank 0, which returns its path.
    `epoch` is the last finished epoch (-1 inside the first), as officially."""
    st, info, strategy = tr.state, tr.info, tr.strategy
    obj = {"epoch": st.epoch - 1, "step": st.step, "scheduler": tr.scheduler.state_dict(),
           "train_state": dataclasses.asdict(st), "args": dataclasses.asdict(tr.cfg),
           "model_args": getattr(tr.model, "model_args", None), "world_size": info.world_size}
    if tr.scaler is not None:
        obj["scaler"] = tr.scaler.state_dict()
    if strategy.sharded:
        name = f"{SHARDS}/step-{st.step:09d}"
        tmp = tr.out / SHARDS / f".writing-step-{st.step:09d}"
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a write a crash interrupted
        barrier(info)
        model_sd, optim_sd = get_state_dict(tr.model, tr.optimizer)
        try:  # every process writes its own shards
            with _one_process_quiet(info):
                dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp, no_dist=not info.distributed)
        except CheckpointException as e:  # a BaseException in torch: say where and why, as a failed run
            raise RunFailed(f"writing the sharded checkpoint {tmp} failed: {_first_line(e)}") from None
        obj["sharded"] = name
    else:
        obj["optimizer"] = tr.optimizer.state_dict()
    model = strategy.full_state_dict(tr.model)  # collective under FSDP
    barrier(info)
    if not info.is_main:
        return None
    obj["model"] = model
    if strategy.sharded:
        final = tr.out / name
        shutil.rmtree(final, ignore_errors=True)  # the same step written again (a rollback)
        os.replace(tmp, final)
    last = checkpoints.save(tr.out / "checkpoint-last.pth", obj)
    for extra in extra_names:
        if strategy.sharded:  # a kept epoch keeps its own folder: hard links to the same files, no copy
            obj["sharded"] = f"{SHARDS}/{Path(extra).stem}"
            _link_tree(final, tr.out / obj["sharded"])
        checkpoints.save(tr.out / extra, obj)
    current = final.name if strategy.sharded else None
    for old in [*(tr.out / SHARDS).glob("step-*"), *(tr.out / SHARDS).glob(".writing-*")]:
        if old.name != current:  # superseded (or left by a killed write, or by an fsdp run now resumed with ddp)
            shutil.rmtree(old, ignore_errors=True)
    return last


def _first_line(e: BaseException) -> str:
    """What went wrong, in one line: a CheckpointException's first process's own error, not its traceback."""
    failures = getattr(e, "failures", None)
    if failures:
        first = next(iter(failures.values()))
        e = getattr(first, "exc", first)
        if isinstance(e, tuple):  # (exception, its stack) as torch keeps it
            e = next((x for x in e if isinstance(x, BaseException)), e[0])
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text[:300] + ("..." if len(text) > 300 else "")


@contextlib.contextmanager
def _one_process_quiet(info):
    """DCP warns on every call that it assumes a single process when there is no process group: that is the
    intent here (one process runs the model whole), so the warning is dropped -- inside this block only."""
    with warnings.catch_warnings():
        if not info.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _link_tree(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=_link_or_copy)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


_DCP_METADATA = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
                 ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("torch", "Size")} | {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "ChunkStorageMetadata", "TensorProperties",
        "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")}


class _MetadataUnpickler(pickle.Unpickler):
    """The classes a checkpoint folder's `.metadata` is made of, and nothing else: torch's own reader unpickles it
    whole, so a crafted folder would run code on resume."""

    def find_class(self, module, name):
        if (module, name) in _DCP_METADATA or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint folder's metadata")


class SafeReader(dcp.FileSystemReader):
    """torch's folder reader with the metadata read through the allow-list (the tensors it reads are raw bytes,
    other items through torch.load(weights_only=True))."""

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except Exception as e:  # refused, truncated, not a pickle
            raise CheckpointError(f"{self.path}: its .metadata is not a checkpoint folder's ({e})") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def find_resume(output_dir: Path, resume: str) -> Optional[Path]:
    """`auto` (`--resume`): the run's own checkpoint-last if present; '' / 'none': start fresh, which
    a directory already holding a run's checkpoint refuses (its results would be overwritten); else a path."""
    last = Path(output_dir) / "checkpoint-last.pth"
    if resume in ("", "none", None):
        if last.is_file():
            check_fresh(output_dir, resume=False)
        return None
    if resume == "auto":
        if last.is_file():
            return last
        kept = sorted(Path(output_dir).glob("checkpoint-*.pth"))
        if kept:  # a run was here and its last checkpoint is gone: starting over would delete its state
            raise CheckpointError(f"{output_dir} holds {kept[-1].name} but no checkpoint-last.pth: continue from it "
                                  f"with resume={kept[-1]}, or start fresh in another --output-dir")
        return None  # nothing yet (a first start, e.g. a requeued Slurm job's)
    return Path(resume)


def load_checkpoint(path: Path, tr) -> TrainState:
    """Model, optimizer, scheduler and scaler from `path` into trainer `tr` (any strategy from any strategy,
    any world size from any other); returns the saved TrainState in this run's micro-batches."""
    path = Path(path)
    obj = checkpoints.load_file(path, peek=True)  # memory-mapped: a sharded run never reads the whole model
    meta = _run_fields(obj, path)
    if not meta.sharded:
        obj = checkpoints.load_file(path)  # read: loaded optimizer tensors must not be views of a mapped file
    if meta.sharded:
        rel = Path(meta.sharded)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or rel.parts[0] != SHARDS:
            raise CheckpointError(f"{path}: sharded={meta.sharded!r} is not a folder under {SHARDS}/ beside it")
        folder = path.parent / rel
        if not (folder / ".metadata").is_file():
            raise CheckpointError(f"{path} keeps its optimizer state in {folder}, which is missing or incomplete")
        SafeReader(folder).read_metadata()  # refused here, in one line, before torch's reader retries per rank
        model_sd, optim_sd = get_state_dict(tr.model, tr.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        try:  # each process reads the parts of its own shards
            with _one_process_quiet(tr.info):
                dcp.load(state, storage_reader=SafeReader(folder), no_dist=not tr.info.distributed)
            set_state_dict(tr.model, tr.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        except (CheckpointException, RuntimeError, KeyError, OSError, ValueError) as e:
            raise CheckpointError(f"{folder} (named by {path.name}) cannot be loaded into this run's model and "
                                  f"optimizer -- damaged, incomplete or of another model: {_first_line(e)}") from None
    else:
        tr.strategy.load_full_state_dict(tr.model, obj["model"])
        _load_optimizer(tr, obj, path)
    # The schedule is not restored: it is a function of the step and this run's config (epochs, lr, warm-up), so
    # a resumed run that extends `epochs` or changes the batch follows its new schedule, not the saved one.
    if meta.train_state is None:
        return TrainState(epoch=meta.epoch + 1, step=meta.step)
    # segments as saved: one recorded before the window was part of the layout has none (the sampler fills it in)
    st = TrainState(**{**meta.train_state.model_dump(), "segments": obj["train_state"].get("segments", [])})
    seen = st.batch * (meta.args.batch_size if meta.args and meta.args.batch_size else tr.cfg.batch_size) * \
        meta.world_size
    per = tr.cfg.batch_size * tr.info.world_size
    if seen % (per * tr.accum):
        raise CheckpointError(f"{path} stopped {seen} images into epoch {st.epoch}, which is not a whole number of "
                              f"this run's optimizer steps of {tr.cfg.batch_size} x {tr.accum} x "
                              f"{tr.info.world_size} processes = {per * tr.accum} images: resume with the "
                              f"effective_batch_size it was written with")
    st.batch = seen // per
    if st.batch > tr.steps_per_epoch * tr.accum:
        raise CheckpointError(f"{path}: train_state.batch: {seen} images into epoch {st.epoch}, more than the epoch's "
                              f"{tr.steps_per_epoch * tr.accum * per}: the file is damaged, or of other data")
    return st


def _load_optimizer(tr, obj: dict, path: Path) -> None:
    """The saved optimizer (and fp16 scaler) state into this run's: one that torch cannot load, or whose
    hyper-parameters are not of the types this run's optimizer holds (they would fail inside its first step), is
    one line naming `optimizer`."""
    fresh = [{k: v for k, v in g.items() if k != "params" and v is not None} for g in tr.optimizer.param_groups]
    try:
        if tr.strategy.sharded and tr.info.distributed:  # a ddp run's file under fsdp: the optimizer by name
            set_optimizer_state_dict(tr.model, tr.optimizer, _by_name(tr.model, tr.optimizer, obj["optimizer"]),
                                     options=StateDictOptions(full_state_dict=True))
        else:
            tr.optimizer.load_state_dict(obj["optimizer"])
        if tr.scaler is not None and "scaler" in obj:
            tr.scaler.load_state_dict(obj["scaler"])
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: optimizer: {_first_line(e)} (damaged, or of another optimizer or model)"
                              ) from None
    for i, (g, ref) in enumerate(zip(tr.optimizer.param_groups, fresh)):
        for k, v in ref.items():
            if not _alike(g.get(k), v):
                raise CheckpointError(f"{path}: optimizer.param_groups[{i}].{k}={g.get(k)!r} where this run's "
                                      f"optimizer holds {v!r}: the file is damaged")
    params = [p for g in tr.optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):  # a moment of another shape, or not finite, would crash or diverge the first step
        for k, v in tr.optimizer.state.get(p, {}).items():
            bad = ("is not finite" if v.is_floating_point() and not bool(torch.isfinite(v).all()) else
                   f"has shape {tuple(v.shape)}, its parameter {tuple(p.shape)}" if v.ndim and v.shape != p.shape else
                   "is negative" if k == "step" and bool((v < 0).any()) else None) if torch.is_tensor(v) else None
            if bad:
                raise CheckpointError(f"{path}: optimizer.state[{i}].{k} {bad}: the file is damaged")


def _alike(value, ref) -> bool:
    """`value` is of the kind `ref` is: a number for a number, a bool for a bool, a tuple of as many alike items."""
    if isinstance(ref, bool) or not isinstance(ref, (int, float, tuple, list)):
        return isinstance(value, type(ref))
    if isinstance(ref, (int, float)):
        return type(value) in (int, float) and math.isfinite(value)
    return isinstance(value, (tuple, list)) and len(value) == len(ref) and all(map(_alike, value, ref))


def _run_fields(obj, path: Path) -> RunCheckpoint:
    """The checkpoint's fields besides its tensors, through their schema: a damaged one is one line naming the
    field (official checkpoints' `args` is an argparse.Namespace, read as a dict)."""
    if not isinstance(obj, dict) or "model" not in obj or "optimizer" not in obj and "sharded" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint (it has no model and optimizer state to resume)")
    if obj.get("train_state") is None and ("step" in obj or "world_size" in obj):  # this toolkit's, not official
        raise CheckpointError(f"{path}: train_state: missing (where the run stands in its data): the file is damaged")
    fields = {k: obj[k] for k in RunCheckpoint.model_fields if k in obj and k != "args"}
    if obj.get("args") is not None:  # a dict, or an official checkpoint's Namespace; anything else as it is (refused)
        fields["args"] = training_args(obj) if hasattr(obj["args"], "__dict__") or isinstance(obj["args"], dict) \
            else obj["args"]
    return validate(fields, RunCheckpoint, CheckpointError, str(path))


def _by_name(model, optimizer, saved: dict) -> dict:
    """A torch optimizer state dict (parameters numbered in group order) keyed by parameter names."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]
    return {"state": {order[i]: s for i, s in saved["state"].items()}, "param_groups": groups}


def resume(tr) -> None:
    """Continue from cfg.resume (auto: the run's own checkpoint-last) if there is one."""
    path = find_resume(tr.out, tr.cfg.resume)
    if path is None:
        return
    tr.state = load_checkpoint(path, tr)
    _logger.info("resumed from %s: epoch %d, micro-batch %d, step %d", path, tr.state.epoch, tr.state.batch,
                 tr.state.step)
