"""One output policy for every command that writes (pretrain ... evaluate, convert, visualize, export, predict):

* a folder belongs to one run at a time: `claim` takes a lock the OS releases when the process dies;
* a folder that already holds results is not overwritten (`--resume` continues it), and a resumed run keeps
  the settings it started with (`settings.json`); a single output file or folder is published only where
  nothing is (`atomic(replace=False)`, `atomic_folder`: two commands racing for one name, one wins);
* a refusal leaves nothing behind: a command that stops on a user error before it wrote any weights
  removes what its claim created, so the corrected command starts as if the first had never run; a run
  that started and fails (a full disk: `WriteFailed`, decided by errno) keeps its folder and its log;
* no file is written through a symbolic link or a hard link: the toolkit's own files are written beside
  their name and renamed onto it (`atomic`: a crash never leaves half a file; a link at the name is
  replaced, never followed); a file appended to or rewritten in place is first made this folder's own
  (`private`: a copy renamed onto it when it has other names, as in a `cp -al` snapshot of a run); a
  claimed folder holding a symbolic link is refused, since the host libraries' writers would follow it;
* an output is never one of the command's own inputs (`refuse_inputs`), and two inputs never share one
  output name (`unique_names`)."""
import contextlib
import fcntl
import itertools
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import ConfigError, RunFailed, UserError
from .reading import parse_json, validate
from .schemas import Settings
from .writing import (  # noqa: F401  (every command writes through this module)
    WriteFailed,
    append,
    atomic,
    atomic_folder,
    private,
    write_bytes,
    write_error,
    write_json,
    write_stream,
    write_text,
    write_with,
)

LOCK = ".lock"
LOCK_ENV = "MAE_TRANSFER_LOCKED"  # given by a launcher holding the lock to the processes it starts
SETTINGS = "settings.json"
# files by which a folder is known to hold a run: the toolkit's, detectron2's, mmengine's, an export's
RUN_MARKERS = ("result.json", "checkpoint-last.pth", "last_checkpoint", "export.json")
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".pt2", ".onnx", ".data")


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


# ------------------------------------------------------------------------------------ claiming a folder
def check_fresh(output_dir, resume: bool) -> None:
    """An output directory holds one run: starting afresh where a run already wrote is refused (its
    results would be overwritten); `resume` continues it instead."""
    found = [m for m in RUN_MARKERS if (Path(output_dir) / m).is_file()]
    if found and not resume:
        raise ConfigError(f"{output_dir} already holds a run ({found[0]}): pass --resume to continue it, "
                          f"or choose another --output-dir")


def _read_settings(path: Path) -> Tuple[Optional[dict], str]:
    """settings.json through its schema: (its settings, "") or (None, why it cannot be used)."""
    try:
        obj = parse_json(path.read_bytes(), "settings")
        then = validate(obj, Settings, ConfigError, str(path)).model_dump()
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, ConfigError) as e:
        return None, f"damaged ({str(e).split(': ', 1)[-1]})"
    if then["recipe"] is None:  # written by an earlier version, which recorded the identity only
        return None, "without the run's recipe (written by an earlier mae-transfer)"
    return then, ""


def check_settings(output_dir, resume: bool, run: Optional[Dict[str, Optional[str]]], allow_changes: bool) -> None:
    """A run is continued with the settings it was started with: `run` (seed, model, data, ...) is written to
    <dir>/settings.json when the run starts; a `--resume` with other values -- or of a run whose settings.json
    is missing or damaged, whose settings cannot be known -- is refused unless `allow_changes`, which records
    the new values as the run's. `run`: from `results.settings`."""
    if run is None:
        return
    path, now = Path(output_dir) / SETTINGS, dict(validate(dict(run), Settings, ConfigError, "settings").model_dump())
    holds_run = any((Path(output_dir) / m).is_file() for m in RUN_MARKERS)
    then, why = _read_settings(path) if resume and holds_run else (None, "")
    if why and not allow_changes:
        raise ConfigError(f"{output_dir} holds a run whose {SETTINGS} is {why}, so its seed, model, data and "
                          f"recipe cannot be checked: add --allow-changes to resume with the settings given now")
    if then and now.get("backbone") is None:  # left out on resume: the run continues from its own checkpoint
        now["backbone"] = then.get("backbone")
    changed = [f"{k} {'(none)' if a is None else a} -> {'(none)' if b is None else b}"
               for k, a, b in _changes(then or {}, now)]
    if changed and not allow_changes:
        raise ConfigError(f"{output_dir} holds a run started with other settings ({'; '.join(changed)}): "
                          f"resume it with its own, or add --allow-changes to go on with the new ones")
    if now != then:  # unchanged: not rewritten (a refused resume leaves the folder as it was, times included)
        write_json(path, now)


def _changes(then: dict, now: dict) -> List[tuple]:
    """(name, then, now) of every setting that differs; the recipe field by field (`img_size=`)."""
    if not then:
        return []
    a, b = ({**{k: v for k, v in s.items() if k != "recipe"},
             **{f"{k}=": v for k, v in (s.get("recipe") or {}).items()}} for s in (then, now))
    return [(k, a.get(k), b.get(k)) for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)]


class _Snapshot:
    """What a folder held when it was claimed, so that a refused command can put it back as it was: the names
    in it, and the bytes of its small files (a host library may rewrite its config or append to its log before
    the refusal), within a budget; and their times and those of its folders, put back too."""

    BUDGET = 64 << 20  # bytes of small files kept

    def __init__(self, folder: Path):
        self.folder = folder
        self.created = [p for p in [folder, *folder.parents] if not p.exists()]  # the folders a claim makes
        self.names = self._names()
        self.saved, budget = {}, self.BUDGET
        for n in sorted(os.listdir(folder) if folder.is_dir() else ()):
            p = folder / n
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= min(budget, 1 << 24):
                self.saved[n] = p.read_bytes()
                budget -= len(self.saved[n])
        folders = [""] + [n for n in self.names if (folder / n).is_dir() and not (folder / n).is_symlink()]
        self.times = {n: (s.st_atime_ns, s.st_mtime_ns) for n in [*self.saved, *folders]
                      for s in [os.stat(folder / n)]} if folder.is_dir() else {}

    def _names(self, limit: int = 100_000) -> set:
        """Every path inside the folder (relative; a new file in an old subfolder too, e.g. tensorboard's)."""
        walk = os.walk(self.folder, followlinks=False) if self.folder.is_dir() else ()
        return set(itertools.islice((os.path.relpath(os.path.join(root, n), self.folder)
                                     for root, dirs, files in walk for n in dirs + files), limit))

    def wrote_weights(self) -> bool:
        return any(Path(n).suffix in WEIGHT_SUFFIXES or Path(n).name == "last_checkpoint"
                   for n in self._names() - self.names)

    def restore(self) -> None:
        if not self.folder.exists():
            return
        for n in sorted(self._names() - self.names):  # a new folder before what is in it
            p = self.folder / n
            if os.path.lexists(p):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for n, data in self.saved.items():
            p = self.folder / n
            if n != LOCK and (not p.is_file() or p.stat().st_size != len(data) or p.read_bytes() != data):
                write_bytes(p, data)
        for n, ns in sorted(self.times.items(), reverse=True):  # a folder after what is in it
            with contextlib.suppress(OSError):
                os.utime(self.folder / n, ns=ns, follow_symlinks=False)
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
        f = _lock(out)
    except OSError as e:
        raise ConfigError(f"cannot write to the output folder {out}: {e.strerror}") from None
    started = False
    with f:
        try:
            _own_files(out)
            f.truncate()
            here = os.stat(out)
            f.write(f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(sys.argv)}\n"
                    f"folder {here.st_dev}:{here.st_ino}\n")
            f.flush()
            if not markers_ok:
                check_fresh(out, resume)
            for stale in out.glob(".*.tmp*"):  # half-written files of a run killed mid-write (we hold the lock)
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
            check_settings(out, resume, run, allow_changes)
            started = True
            yield  # the lock goes with the file, closed here or by the OS
        except BaseException as e:
            # a refusal, or a failure of the claim itself, leaves the folder as it was; a run that started and
            # failed (a full disk) keeps it, its log and its result.json
            if (_refusal(e) or not started) and not snap.wrote_weights():
                with contextlib.suppress(OSError, UserError, RunFailed):
                    snap.restore()
            raise


def _lock(out: Path):
    """<out>/.lock, open and locked (lockf: not inherited by forked loader workers, gone when this process dies),
    a file of this folder's own: one with other names (a `cp -al` snapshot of a run shares it with the run) is
    replaced by a new one first, and a lock taken on a file no longer at the name is taken again."""
    path, here = out / LOCK, os.stat(out)
    for _ in range(20):
        _unshare_lock(path, here)
        f = open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = (f.read().strip().splitlines() or ["another process"])[0]
            f.close()
            raise ConfigError(f"{out} is in use by another run ({holder}); wait for it to end, or choose "
                              f"another output folder") from None
        mine, now = os.fstat(f.fileno()), _lstat(path)
        if now is not None and (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
            if mine.st_nlink == 1:
                return f
            write_bytes(path, b"")  # held by us, so by no run: the name gets a file of its own, then locked again
        f.close()
    raise ConfigError(f"{path} keeps being replaced by another process; retry, or choose another output folder")


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _unshare_lock(path: Path, here: os.stat_result) -> None:
    """A lock file with other names that names another folder as its holder's (a run of the folder this one was
    snapshotted from, maybe running now) is replaced by a new file before it is locked (in turn with other
    claimants: flock on the folder). One holding this folder's run, or whose cannot be told, is left to `_lock`."""
    st = _lstat(path)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(dfd, fcntl.LOCK_EX)
        st = _lstat(path)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return
        with open(path, "rb") as f:
            text = f.read(4096).decode("utf-8", "replace").splitlines()
        owner = [x.split()[1] for x in text if x.startswith("folder ") and len(x.split()) > 1]
        if owner and owner[0] != f"{here.st_dev}:{here.st_ino}":
            write_bytes(path, b"")
    finally:
        os.close(dfd)


def _own_files(out: Path, limit: int = 100_000) -> None:
    """A claimed folder holding a symbolic link is refused (the toolkit's and its hosts' writers would follow it);
    a file a host may append to or rewrite in place (detectron2's log.txt and metrics.json, mmengine's
    last_checkpoint) is made the folder's own where it has other names (`private`). Weights stay shared: the
    toolkit replaces them by renaming, never in place. At most `limit` entries are looked at."""
    entries = ((Path(root) / n, n in files) for root, dirs, files in os.walk(out, followlinks=False)
               for n in dirs + files)
    found = []
    for p, is_file in itertools.islice(entries, limit):
        if p.is_symlink():
            raise ConfigError(f"{p} is a symbolic link: the toolkit and its host libraries would write "
                              f"through it; remove it, or choose another output folder")
        if is_file and p.name != LOCK and p.suffix not in WEIGHT_SUFFIXES:
            found.append(p)
    for p in found:
        private(p)
