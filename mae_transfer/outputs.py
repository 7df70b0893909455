"""One output policy for every command that writes (pretrain ... evaluate, convert, visualize, export, predict):

* a folder belongs to one run at a time: `claim` takes a lock the OS releases when the process dies;
* a folder that already holds results is not overwritten (`--resume` continues it), and a resumed run keeps
  the settings it started with (`settings.json`);
* a refusal leaves nothing behind: a command that stops on a user error before it wrote any weights
  removes what its claim created, so the corrected command starts as if the first had never run;
* no file is written through a symbolic link: the toolkit's own files are written beside their name and
  renamed onto it (`atomic`: a crash never leaves half a file; a link at the name is replaced, never
  followed), and a claimed folder holding a link is refused, since the host libraries' writers would follow it;
* an output is never one of the command's own inputs (`refuse_inputs`), and two inputs never share one
  output name (`unique_names`)."""
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from .errors import CheckpointError, ConfigError, UserError
from .reading import parse_json, validate
from .schemas import Settings

LOCK = ".lock"
LOCK_ENV = "MAE_TRANSFER_LOCKED"  # given by a launcher holding the lock to the processes it starts
SETTINGS = "settings.json"
# files by which a folder is known to hold a run: the toolkit's, detectron2's, mmengine's, an export's
RUN_MARKERS = ("result.json", "checkpoint-last.pth", "last_checkpoint", "export.json")
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".pt2", ".onnx", ".data")
_UMASK = os.umask(0o022)  # read once, at import (single-threaded), and put back at once
os.umask(_UMASK)


# ------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic(path) -> Iterator[str]:
    """Yield a temporary name beside `path` (same suffix, so writers that go by it still do); on success it
    is fsynced and renamed onto `path`. A symlink at `path` is replaced, never written through; a crash or an
    error leaves `path` as it was. A folder that cannot be written is one CheckpointError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)  # mkstemp creates exclusively (O_EXCL): never through a link
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide every output from the user's group
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        if isinstance(e, RuntimeError) and "write" not in str(e).lower():
            raise
        kept = f"; {path} is the last good one, intact" if path.is_file() else ""
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(f"cannot write {path} ({reason}){kept}") from None
    finally:
        if tmp and os.path.lexists(tmp):
            os.unlink(tmp)


def write_with(path, write: Callable[[str], None]) -> Path:
    """`write(tmp_name)` then rename onto `path` (see `atomic`)."""
    with atomic(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path, data: bytes) -> Path:
    return write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: Optional[int] = 1) -> Path:
    """JSON (never NaN: `allow_nan=False`), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------- inputs, outputs
def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_new(path, what: str = "output") -> None:
    """ConfigError if `path` (a command's single output file, or folder) exists already and is not an empty
    folder: a converted checkpoint or a picture never replaces a file the user has."""
    p = Path(path)
    if os.path.lexists(p) and not (p.is_dir() and not p.is_symlink() and not any(p.iterdir())):
        raise ConfigError(f"{p} exists: the {what} is never written over a file or a folder that holds files; "
                          f"choose a new name or remove it")


def refuse_inputs(outputs: Iterable, inputs: Iterable) -> None:
    """ConfigError if an output is one of the inputs (the same file, through any path or link) or a folder
    that holds one: writing there would destroy what the command reads."""
    ins = [Path(i) for i in inputs if i]
    for o in (Path(o) for o in outputs if o):
        for i in ins:
            inside = i.is_dir() and i.resolve() in o.resolve().parents  # a file of an input folder
            if _same(o, i) or o.resolve() in i.resolve().parents or inside:
                raise ConfigError(f"{o} is the input {i} (or holds it): writing there would replace what is read; "
                                  f"choose another output")


def unique_names(files: Sequence[Path]) -> List[str]:
    """One output name per input file, distinct even where stems repeat (`a/x.jpg`, `b/x.jpg` -> `a_x`, `b_x`;
    `x.jpg`, `x.png` -> `x.jpg`, `x.png`): as many trailing path parts as it takes to tell them apart."""
    def name(p: Path, depth: int, with_suffix: bool) -> str:
        parts = list(p.parts[-depth - 1:-1]) + [p.name if with_suffix else p.stem]
        return "_".join(x.strip("/\\") or "root" for x in parts)

    resolved = [Path(os.path.abspath(f)) for f in files]
    names = [name(p, 0, False) for p in resolved]
    for depth in range(0, 64):
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            return names
        names = [name(p, depth, True) if n in clash else n for p, n in zip(resolved, names)]
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            return names
        names = [name(p, depth + 1, True) if n in clash else n for p, n in zip(resolved, names)]
    dup = next(f for f, n in zip(files, names) if names.count(n) > 1)
    raise ConfigError(f"{dup} is given twice")


def links_inside(folder: Path, limit: int = 100_000) -> Optional[Path]:
    """The first symbolic link inside `folder` (not following links; at most `limit` entries looked at)."""
    seen = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for n in dirs + files:
            p = Path(root) / n
            if p.is_symlink():
                return p
            seen += 1
            if seen >= limit:
                return None
    return None


# ------------------------------------------------------------------------------------ claiming a folder
def check_fresh(output_dir, resume: bool) -> None:
    """An output directory holds one run: starting afresh where a run already wrote is refused (its
    results would be overwritten); `resume` continues it instead."""
    found = [m for m in RUN_MARKERS if (Path(output_dir) / m).is_file()]
    if found and not resume:
        raise ConfigError(f"{output_dir} already holds a run ({found[0]}): pass --resume to continue it, "
                          f"or choose another --output-dir")


def _read_settings(path: Path) -> Optional[Dict[str, Optional[str]]]:
    """settings.json through its schema; None when it is missing or damaged."""
    try:
        obj = parse_json(path.read_bytes(), "settings")
        return validate(obj, Settings, ConfigError, str(path)).model_dump()
    except (OSError, ValueError, ConfigError):
        return None


def check_settings(output_dir, resume: bool, run: Optional[Dict[str, Optional[str]]], allow_changes: bool) -> None:
    """A run is continued with the settings it was started with: `run` (seed, model, data, ...) is written to
    <dir>/settings.json when the run starts; a `--resume` with other values -- or of a run whose settings.json
    is missing or damaged, whose settings cannot be known -- is refused unless `allow_changes`, which records
    the new values as the run's. `run`: from `results.settings`."""
    if run is None:
        return
    path, now = Path(output_dir) / SETTINGS, dict(validate(dict(run), Settings, ConfigError, "settings").model_dump())
    holds_run = any((Path(output_dir) / m).is_file() for m in RUN_MARKERS)
    then = _read_settings(path) if resume and holds_run else None
    if resume and holds_run and then is None and not allow_changes:
        state = "damaged" if path.exists() else "missing"
        raise ConfigError(f"{output_dir} holds a run whose {SETTINGS} is {state}, so its seed, model and data "
                          f"cannot be checked: add --allow-changes to resume with the settings given now")
    if then and now.get("backbone") is None:  # left out on resume: the run continues from its own checkpoint
        now["backbone"] = then.get("backbone")
    changed = [f"{k} {'(none)' if then[k] is None else then[k]} -> {'(none)' if v is None else v}"
               for k, v in now.items() if then and then.get(k) != v]
    if changed and not allow_changes:
        raise ConfigError(f"{output_dir} holds a run started with other settings ({'; '.join(changed)}): "
                          f"resume it with its own, or add --allow-changes to go on with the new ones")
    write_json(path, now)


class _Snapshot:
    """What a folder held when it was claimed, so that a refused command can put it back as it was: the names
    in it, and the bytes of its small files (a host library may rewrite its config or append to its log before
    the refusal), within a budget."""

    BUDGET = 64 << 20  # bytes of small files kept

    def __init__(self, folder: Path):
        self.folder = folder
        self.created = [p for p in [folder, *folder.parents] if not p.exists()]  # the folders a claim makes
        self.names = set(os.listdir(folder)) if folder.is_dir() else set()
        self.saved, budget = {}, self.BUDGET
        for n in sorted(self.names):
            p = folder / n
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= min(budget, 1 << 24):
                self.saved[n] = p.read_bytes()
                budget -= len(self.saved[n])

    def wrote_weights(self) -> bool:
        for n in set(os.listdir(self.folder)) - self.names if self.folder.exists() else ():
            p = self.folder / n
            files = [p] if p.is_file() else (p.rglob("*") if p.is_dir() else [])
            if any(f.suffix in WEIGHT_SUFFIXES or f.name == "last_checkpoint" for f in files):
                return True
        return False

    def restore(self) -> None:
        if not self.folder.exists():
            return
        for n in set(os.listdir(self.folder)) - self.names:
            p = self.folder / n
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for n, data in self.saved.items():
            p = self.folder / n
            if n != LOCK and (not p.is_file() or p.stat().st_size != len(data) or p.read_bytes() != data):
                write_bytes(p, data)
        for p in self.created:  # innermost first: the folders the claim made, where they are empty again
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def _refusal(e: BaseException) -> bool:
    """A user error (or a launcher whose processes exited with one: status 2)."""
    return isinstance(e, UserError) or (isinstance(e, SystemExit) and e.code == 2)


@contextlib.contextmanager
def claim(output_dir, resume: bool = False, run: Optional[Dict[str, Optional[str]]] = None,
          allow_changes: bool = False, markers_ok: bool = False, inputs: Sequence = ()) -> Iterator[None]:
    """Make `output_dir` this command's for the block (never a folder holding one of its `inputs` or of the
    config, backbone and data `run` records): an exclusive lock (lockf on <dir>/.lock, released by
    the OS when the process dies, so a killed run can be resumed at once), no symbolic link inside, then
    `check_fresh` (unless `markers_ok`: a command that may rewrite its own earlier output, such as predict)
    and `check_settings`. A second command on the same folder is one error naming the holder. If the block
    stops on a user error before any weights were written, the folder is put back as it was.
    One process of a job locks: rank 0 under torchrun, or the launcher that starts the others (torchrun
    processes it starts get MAE_TRANSFER_LOCKED)."""
    out = Path(output_dir)
    if not str(output_dir).strip():
        raise ConfigError("the output folder is an empty path: give one")
    # what the run reads (its config, weights and data, as `run` records them) is never where it writes
    given = [*(inputs or ()), *((run or {}).get(k) for k in ("config", "backbone")),
             *(((run or {}).get("data") or "").split(", "))]
    refuse_inputs([out], [g for g in given if g])
    if os.environ.get(LOCK_ENV) == str(out.resolve()) or os.environ.get("RANK", "0") != "0":
        if not markers_ok:
            check_fresh(out, resume)
        yield
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder: choose another output folder")
    snap = _Snapshot(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write to the output folder {out}: {e.strerror}") from None
    with open(fd, "r+") as f:
        try:  # a POSIX record lock: not inherited by forked loader workers, gone when this process dies
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = f.read().strip() or "another process"
            raise ConfigError(f"{out} is in use by another run ({holder}); wait for it to end, or choose "
                              f"another output folder") from None
        try:
            link = links_inside(out)
            if link is not None:
                raise ConfigError(f"{link} is a symbolic link: the toolkit and its host libraries would write "
                                  f"through it; remove it, or choose another output folder")
            f.truncate()
            f.write(f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(sys.argv)}\n")
            f.flush()
            if not markers_ok:
                check_fresh(out, resume)
            for stale in out.glob(".*.tmp*"):  # half-written files of a run killed mid-write (we hold the lock)
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
            check_settings(out, resume, run, allow_changes)
            yield  # the lock goes with the file, closed here or by the OS
        except BaseException as e:
            if _refusal(e) and not snap.wrote_weights():
                with contextlib.suppress(OSError):
                    snap.restore()
            raise
