import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

# A model small enough for fast CPU tests, in the official layout (several blocks, non-trivial heads).
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4)


@pytest.fixture
def tiny_mae():
    from mae_transfer.models import MaskedAutoencoderViT

    def make(**kw):
        torch.manual_seed(0)
        return MaskedAutoencoderViT(**{**TINY, **kw}).eval()
    return make


def refused(capsys, argv, code: int = 2) -> str:
    """`mae-transfer argv` (in this process) exits `code` with exactly one line on stderr, no traceback: an
    `error:` line (a user mistake, exit 2), or with exit 1 also an `internal error:` line. Returns the line."""
    from mae_transfer.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    lines = ("error: ",) if code == 2 else ("error: ", "internal error: ")
    assert e.value.code == code and len(err) == 1 and err[0].startswith(lines), (e.value.code, err, argv)
    return err[0]


def merged(*groups):
    """key=value overrides of several lists, a later value replacing an earlier one of the same key (the
    command line itself refuses a key given twice)."""
    out = {}
    for group in groups:
        for item in group:
            out[item.split("=", 1)[0]] = item
    return list(out.values())


def assert_result(output_dir, task: str, metrics=(), world_size: int = 1) -> dict:
    """The run's result.json holds the one schema, status ok, its task and these metrics as numbers."""
    from mae_transfer import results

    res = results.read(output_dir)  # raises when the file does not validate
    assert res["task"] == task and res["status"] == "ok" and res["world_size"] == world_size, res
    assert all(isinstance(res["metrics"].get(m), float) for m in metrics), res["metrics"]
    return res


def second_run_is_refused(first, second, out: Path, timeout: float = 600):
    """Start `first` on output dir `out`; once it holds the directory's lock it is paused (SIGSTOP to its
    process group, so a short run cannot end first), `second` (same directory) must exit 2 with one error
    line naming the holder, and `first`, resumed, must finish with its own result.json.
    Both commands are `[python, -m, mae_transfer, ...]`."""
    proc = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout
        while not ((out / ".lock").is_file() and (out / ".lock").read_text().startswith("pid")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            r = subprocess.run(second, capture_output=True, text=True, timeout=timeout)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert "is in use by another run (pid" in r.stderr
    finally:
        err = proc.communicate(timeout=timeout)[1]
    assert proc.returncode == 0, err[-2000:]
    from mae_transfer import results

    res = results.read(out)  # the first run's own result (commands given as python -m mae_transfer ...)
    assert res["status"] == "ok" and res["argv"][1:] == [str(a) for a in first[3:]], res["argv"]
    return res


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous), instead of a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> List[int]:
    """Every process below `pid` (from /proc's parent links), whatever session it is in."""
    children: Dict[int, List[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


_HOLD_HOOK = '''"""Installed by kill_mid_epoch (sitecustomize on PYTHONPATH): a process about to replace an existing
checkpoint-last waits for the test's go first, so the test sees every checkpoint the run writes, however fast it is."""
import os
import sys
import time

_target, _sync, _seen = os.path.abspath(os.environ["MAE_TEST_HOLD"]), os.environ["MAE_TEST_HOLD_SYNC"], [0]


def _hook(event, args):
    if event != "os.rename" or not isinstance(args[1], (str, bytes, os.PathLike)):
        return
    if os.path.abspath(os.fsdecode(args[1])) != _target or not os.path.exists(_target):
        return
    _seen[0] += 1
    open(os.path.join(_sync, f"wait-{_seen[0]}"), "w").close()
    while not os.path.exists(os.path.join(_sync, f"go-{_seen[0]}")):
        time.sleep(0.005)


sys.addaudithook(_hook)
'''


def kill_mid_epoch(cmd, checkpoint: Path, at_step: int, timeout: float = 300):
    """Start `cmd`, SIGKILL it and every process it started (torchrun's, `--num-gpus N`'s) once `checkpoint`
    holds a mid-epoch state at or past `at_step` optimizer steps, and return that state. The run writes
    checkpoint-last every step; a hook holds the writer before each replacement until the test has read the
    one in place (polling alone missed the window when a step was faster than a read). The kill lands while the
    run has gone on past that checkpoint: its next step is computed, not yet saved."""
    from mae_transfer import checkpoints

    sync = Path(tempfile.mkdtemp(prefix="mae-hold-"))
    (sync / "sitecustomize.py").write_text(_HOLD_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(sync), os.environ.get("PYTHONPATH", "")]),
           "MAE_TEST_HOLD": str(Path(checkpoint).resolve()), "MAE_TEST_HOLD_SYNC": str(sync)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    deadline, st, seen = time.time() + timeout, None, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if not (sync / f"wait-{seen + 1}").exists():
                time.sleep(0.01)
                continue
            seen += 1
            st = checkpoints.load_file(checkpoint)["train_state"]
            if st["step"] >= at_step and st["batch"] > 0:
                break
            (sync / f"go-{seen}").touch()
    finally:
        tree = _descendants(proc.pid)  # torchrun starts its workers in sessions of their own
        with contextlib.suppress(ProcessLookupError):  # a run that ended by itself left no group
            os.killpg(proc.pid, signal.SIGKILL)  # everything at once, as a machine that goes away
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(sync, ignore_errors=True)
    assert st is not None and st["batch"] > 0 and st["step"] >= at_step, \
        f"no mid-epoch checkpoint at step >= {at_step} before the run ended (exit {proc.returncode}): {st}"
    return st


@pytest.fixture(scope="session")
def encoder_export(tmp_path_factory):
    """An exported tiny MAE encoder (ONNX and .pt2, 32 px) in a folder, with the checkpoint beside it."""
    pytest.importorskip("onnxruntime")
    from mae_transfer import checkpoints
    from mae_transfer.cli import command
    from mae_transfer.models.mae import mae_vit_tiny_patch8

    d = tmp_path_factory.mktemp("exp")
    torch.manual_seed(0)
    checkpoints.save_official(d / "mae.pth", mae_vit_tiny_patch8(img_size=32).state_dict())
    command("export")(["encoder", "--weights", str(d / "mae.pth"), "--output-dir", str(d / "enc"), "--max-images",
                       "1", "--img-size", "32"])
    return d / "enc"


_READ_HOOK = '''"""Installed by the test suite (sitecustomize on PYTHONPATH): every process records, for each file it
opens under the watched paths, whether it was peeked (checkpoints.load_file(peek=True)), checked (the launcher's
data checks), hashed (result.json) or read."""
import os
import sys

_log, _watch = os.environ["MAE_TEST_READ_LOG"], os.environ["MAE_TEST_READ_WATCH"].split(os.pathsep)
_CHECKS = {"probe", "check_data", "check_coco_json"}


def _hook(event, args):
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if not any(path == w or path.startswith(w + os.sep) for w in _watch):
        return
    kind, f = "read", sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "load_file" and f.f_locals.get("peek"):
            kind = "peek"
        elif f.f_code.co_name in _CHECKS:
            kind = "check"
        elif f.f_code.co_name == "sha256":  # result.json's record of the weights a run started from
            kind = "hash"
        f = f.f_back
    with open(_log, "a") as out:
        out.write(f"{os.getpid()} {kind} {path}\\n")


sys.addaudithook(_hook)
'''


def read_counter(tmp_path: Path, *watched) -> Tuple[dict, Path]:
    """(env, log) for subprocesses whose every open of a file under `watched` is logged as `pid kind path`
    (kind: peek | check | hash | read), the processes they start included."""
    hook = tmp_path / "read_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_READ_HOOK)
    log = tmp_path / "reads.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "MAE_TEST_READ_LOG": str(log),
           "MAE_TEST_READ_WATCH": os.pathsep.join(str(Path(w).resolve()) for w in watched)}
    return env, log


def reads(log: Path) -> List[Tuple[int, str, str]]:
    return [(int(pid), kind, path) for pid, kind, path in (line.split(" ", 2) for line in log.read_text().splitlines())]


def assert_read_once(log: Path, backbone: Path, data, processes: int) -> None:
    """A launcher that started `processes` processes peeked `backbone` and checked every file under `data` (when
    given), alone; each process it started read the backbone once and checked nothing."""
    events = reads(log)
    backbone = str(Path(backbone).resolve())
    launchers = {pid for pid, kind, p in events if kind == "peek" and p == backbone}
    readers = [pid for pid, kind, p in events if kind == "read" and p == backbone]
    assert len(launchers) == 1, events
    assert len(readers) == processes and len(set(readers)) == processes and not launchers & set(readers), events
    checkers = {pid for pid, kind, _ in events if kind == "check"}
    assert checkers == (launchers if data else set()), events
    if data:
        files = {str(f.resolve()) for f in Path(data).rglob("*") if f.suffix in (".png", ".jpg")}
        assert files and files <= {p for _, kind, p in events if kind == "check"}


# property-based tests (hypothesis): seeded and bounded, so the fast tier stays fast
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def tree(root: Path) -> dict:
    """Every file under root (links included, not followed) -> its content hash."""
    out = {}
    for top, dirs, files in os.walk(root):
        for n in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            p = Path(top) / n
            out[str(p.relative_to(root))] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
