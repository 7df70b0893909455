"""How the toolkit writes a file (the writing half of the output policy, `outputs`): beside its name and renamed
onto it (`atomic`), or published only where nothing is (`replace=False`, `atomic_folder`); never through a
symbolic or a hard link (`private` before a file is appended to or rewritten in place); a write the system
refuses is one error naming the file, the operation and the errno (`WriteFailed`: no space, the file-size limit,
an I/O error; a place that cannot hold the file is a CheckpointError, the user's to fix)."""
import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from .errors import CheckpointError, ConfigError, RunFailed, UserError

_UMASK = os.umask(0o022)  # read once, at import (single-threaded), and put back at once
os.umask(_UMASK)
# what says that a path cannot hold the file (the user's choice of place: a refusal); any other errno of a
# write (a full disk, a quota, the file-size limit, an I/O error) is a failure of the command that met it
_PLACE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.ENAMETOOLONG,
          errno.ELOOP, errno.EEXIST}


class WriteFailed(RunFailed):
    """A write that the system refused part-way (no space, quota, file-size limit, I/O error): one `error:` line
    naming the file, the operation and the errno; a run that meets it keeps its folder and records `failed`."""


def _os_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind `e`: itself, or the one a host wrapped (torch.save writing to a file object raises a
    RuntimeError whose context is the OSError of the write)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno:
            return e
        seen.add(id(e))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def write_error(path: Path, e: BaseException, op: str = "write") -> Optional[UserError]:
    """The one-line error of a write of `path` that raised `e` (None when `e` is no OS error: a bug)."""
    err = _os_error(e)
    if err is None:
        return None
    kept = f"; {path} is the last good one, intact" if op == "write" and path.is_file() else ""
    text = f"cannot {op} {path}: {err.strerror or os.strerror(err.errno)} " \
           f"({errno.errorcode.get(err.errno, err.errno)}){kept}"
    return CheckpointError(text) if err.errno in _PLACE else WriteFailed(text)


# ------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic(path, replace: bool = True) -> Iterator[str]:
    """Yield a temporary name beside `path` (same suffix, so writers that go by it still do); on success it
    is fsynced and renamed onto `path` -- or with `replace=False` published only if nothing is at `path` (a
    hard link made, which fails where a file is: the one output of a command that never replaces one; the
    loser of two racing writers is one ConfigError, the winner's file intact). A link at `path` is replaced,
    never written through; a crash or an error leaves `path` as it was. A write the system refuses is one
    CheckpointError (a place that cannot hold it) or WriteFailed (no space, file-size limit: by errno)."""
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
        if replace:
            os.replace(tmp, path)
            tmp = None
        else:
            _publish_new(tmp, path)  # a second name made: the temporary one goes below
    except UserError:
        raise
    except (OSError, RuntimeError) as e:  # torch wraps the OSError of a write in a RuntimeError
        err = write_error(path, e)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp and os.path.lexists(tmp):
            os.unlink(tmp)


def _publish_new(tmp: str, path: Path) -> None:
    """`tmp` becomes `path` only if nothing is there: link() fails with EEXIST where a name is, atomically."""
    try:
        try:
            os.link(tmp, path)
        except OSError as e:  # a file system without hard links: claim the name exclusively, then rename onto it
            if isinstance(e, FileExistsError) or e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                                                  errno.EMLINK, errno.ENOSYS):
                raise
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
            os.replace(tmp, path)
    except FileExistsError:
        raise ConfigError(f"{path} exists (written meanwhile by another command?): the output is never written "
                          f"over a file; choose a new name or remove it") from None


@contextlib.contextmanager
def atomic_folder(path) -> Iterator[Path]:
    """Yield a new folder beside `path` to fill; on success it is renamed onto `path`, which must not exist or
    be an empty folder (rename fails where one holds files: two racing commands, one wins, one ConfigError)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            raise ConfigError(f"{path} exists and holds files (written meanwhile by another command?): the output "
                              f"is never written over them; choose a new name or remove it") from None
        tmp = None
    except OSError as e:
        raise write_error(path, e) or e from None
    finally:
        if tmp is not None and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def write_with(path, write: Callable[[str], None], replace: bool = True) -> Path:
    """`write(tmp_name)` then rename onto `path` (see `atomic`)."""
    with atomic(path, replace) as tmp:
        write(tmp)
    return Path(path)


def write_stream(path, write: Callable[[BinaryIO], None], replace: bool = True) -> Path:
    """`write(file)` into a file object opened here, then rename onto `path`: a writer that takes a file
    object (torch.save) then reports a failed write with its errno (given a name, torch's own C++ writer says
    only "unexpected pos")."""
    with atomic(path, replace) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_bytes(path, data: bytes, replace: bool = True) -> Path:
    return write_stream(path, lambda f: f.write(data), replace)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: Optional[int] = 1) -> Path:
    """JSON (never NaN: `allow_nan=False`), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def private(path) -> Path:
    """Make `path` this folder's own before it is appended to or rewritten in place: a file with other names
    (hard links: a `cp -al` snapshot of a run shares every file with the run) is replaced by a copy of itself
    (bytes, mode and times) renamed onto the name, so the other names keep what they hold."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        with atomic(p) as tmp:
            shutil.copyfile(p, tmp)
            shutil.copystat(p, tmp)
    return p


def append(path, text: str) -> Path:
    """Append `text` to `path` (a log), made this folder's own first (`private`), never through a link."""
    p = private(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        with open(fd, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise write_error(p, e, "append to") or e from None
    return p
