"""The output policy, second round (#40): a hard-linked snapshot of a run is never written through, every writing
command claims its output (two racing for one name: one wins, one `error:` line), and a failure after the start
is told apart from a refusal (by errno: one line naming the file and the operation, the folder and its run.log
kept, `failed` recorded; a resume that fails before its first step leaves the earlier result.json as it was)."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import merged, refused
from PIL import Image

from mae_transfer import checkpoints, outputs, results
from mae_transfer import models as M

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# the demo config at its smallest: 2 steps an epoch, no loader workers, no pictures but the last epoch's
TINY = ["img_size=32", "demo_samples=32", "batch_size=16", "effective_batch_size=16", "warmup_epochs=0",
        "num_workers=0", "vis_freq=100", "save_freq=100", "epochs=1"]


def _argv(out, *extra):
    flags = [x for x in extra if x.startswith("--")]
    return ["pretrain", "--config", "demo_tiny", "--output-dir", str(out), *flags,
            *merged(TINY, [x for x in extra if not x.startswith("--")])]


def _pretrain(out, *extra, **kw):
    return subprocess.run([PY, "-m", "mae_transfer", *_argv(out, *extra)], capture_output=True, text=True,
                          timeout=600, **kw)


def _files(folder: Path, skip=()):
    """Every file under `folder`: (SHA-256, mtime)."""
    return {str(p.relative_to(folder)): (results.sha256(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch pretraining run (copied by each test that changes one)."""
    out = tmp_path_factory.mktemp("trust") / "run"
    r = _pretrain(out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)  # copy2: bytes and mtimes
    return where


# ------------------------------------------------------------------------------------------- hard links
@pytest.mark.slow
def test_a_hard_linked_snapshot_resumes_without_changing_the_original(finished_run, tmp_path):
    original = _copy(finished_run, tmp_path / "run")
    snap = tmp_path / "snap"
    subprocess.run(["cp", "-al", str(original), str(snap)], check=True)  # the cheap way to branch a run
    before = _files(original)
    r = _pretrain(snap, "epochs=2", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _files(original) == before  # .lock, log.txt, run.log, ...: not a byte nor an mtime changed
    assert len((snap / "log.txt").read_text().splitlines()) == 2 and "epoch 2/2" in (snap / "run.log").read_text()


def test_a_lock_shared_with_another_folders_running_run_is_replaced_not_written(tmp_path):
    original, snap = tmp_path / "run", tmp_path / "snap"
    code = ("import sys, time\nfrom mae_transfer import outputs\nwith outputs.claim(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([PY, "-c", code, str(original)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        snap.mkdir()
        os.link(original / ".lock", snap / ".lock")  # as `cp -al` makes it while the run goes on
        held = (original / ".lock").read_bytes()
        with outputs.claim(snap):  # the snapshot is another folder: not "in use"
            assert not os.path.samefile(snap / ".lock", original / ".lock")
        assert (original / ".lock").read_bytes() == held
        with pytest.raises(outputs.ConfigError, match="is in use by another run"):
            with outputs.claim(original):
                pass
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------- one output, one writer
def _mae_file(path: Path, shift: float = 0.0) -> Path:
    torch.manual_seed(0)
    mae = M.create_mae("mae_vit_tiny_patch8", img_size=32, depth=1, decoder_depth=1)
    sd = {k: v + shift for k, v in mae.state_dict().items()}
    checkpoints.save(path, {"model": sd, "model_args": mae.model_args})
    return path


def _contents(out: Path):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.is_dir() else out.read_bytes()


def _race(monkeypatch, other) -> dict:
    """Between the command's own check that its output is new and its write, `other` writes that output (the
    second of two commands started together, finishing first)."""
    real, won = outputs.check_new, {}

    def racing(path, what="output"):
        real(path, what)
        monkeypatch.setattr(outputs, "check_new", real)
        other()
        won["contents"] = _contents(Path(path))
    monkeypatch.setattr(outputs, "check_new", racing)
    return won


@pytest.mark.parametrize("target, name", [("official", "out.pth"), ("safetensors", "out.safetensors"),
                                          ("hf", "out")])
def test_two_converts_into_one_name_one_wins(tmp_path, monkeypatch, capsys, target, name):
    from mae_transfer.convert import convert_checkpoint

    a, b, out = _mae_file(tmp_path / "a.pth"), _mae_file(tmp_path / "b.pth", 1.0), tmp_path / name
    won = _race(monkeypatch, lambda: convert_checkpoint(b, target, out))
    line = refused(capsys, ["convert", str(a), "--to", target, str(out)])
    assert "exists" in line and str(out) in line
    assert _contents(out) == won["contents"]  # the winner's, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.pth", "b.pth", name])  # no temporary left


def test_two_visualizes_into_one_grid_one_wins(tmp_path, monkeypatch, capsys):
    ck, photo, grid = _mae_file(tmp_path / "mae.pth"), tmp_path / "photo.png", tmp_path / "grid.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
    won = _race(monkeypatch, lambda: grid.write_bytes(b"the other command's grid"))
    line = refused(capsys, ["visualize", "--checkpoint", str(ck), "--images", str(photo), "-o", str(grid)])
    assert "exists" in line and grid.read_bytes() == won["contents"] == b"the other command's grid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "mae.pth", "photo.png"]


# ------------------------------------------------------------------------------ failures after the start
_FSIZE = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
          "from mae_transfer.cli import main\nmain(sys.argv[1:])\n")


@pytest.mark.parametrize("target, name", [("official", "o.pth"), ("safetensors", "o.safetensors")])
@pytest.mark.slow
def test_a_write_past_the_file_size_limit_is_one_error_line(tmp_path, target, name):
    src, out = _mae_file(tmp_path / "mae.pth"), tmp_path / name
    assert src.stat().st_size > 1 << 16
    r = subprocess.run([PY, "-c", _FSIZE, "convert", str(src), "--to", target, str(out)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "MAE_TRANSFER_LOG_DIR": str(tmp_path / "logs")})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1, r.stderr[-2000:]
    assert err[0] == f"error: cannot write {out}: File too large (EFBIG)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mae.pth"]  # nothing half-written


def _no_space(monkeypatch) -> None:
    """The disk fills up while the first checkpoint is written, and stays full (result.json cannot be written
    either): torch.save and every later fsync fail with ENOSPC."""
    real, full = torch.save, []

    def save(obj, f, *a, **kw):
        if "checkpoint-last" in str(getattr(f, "name", f)):
            full.append(True)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **kw)

    def fsync(fd, real_fsync=os.fsync):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_after_the_start_names_the_checkpoint_and_keeps_the_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _no_space(monkeypatch)
    line = refused(capsys, _argv(out), code=1)
    assert line == f"error: cannot write {out / 'checkpoint-last.pth'}: No space left on device (ENOSPC)"
    assert (out / "run.log").read_text().strip() and (out / "settings.json").is_file()  # the folder is kept
    assert not list(out.glob(".*.tmp*"))


@pytest.mark.slow
def test_a_full_disk_records_failed_naming_the_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("no tmpfs can be mounted here (not root)")
    try:
        out = disk / "run"
        r = _pretrain(out, env={**os.environ, "MAE_TRANSFER_LOG_DIR": str(tmp_path / "logs")})
        err = r.stderr.strip().splitlines()
        named = f"cannot write {out / 'checkpoint-last.pth'}: No space left on device (ENOSPC)"
        assert r.returncode == 1 and err == [f"error: {named}"], r.stderr[-2000:]
        res = results.read(out)
        assert res["status"] == "failed" and named in res["error"]
        assert "model mae_vit_tiny_patch8" in (out / "run.log").read_text()  # the folder and its log are kept
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_resume_that_does_not_fit_an_override_is_one_line_and_leaves_the_run(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    before = _files(run, skip=(outputs.LOCK,))
    r = _pretrain(run, "img_size=64", "epochs=2", "--resume", "--allow-changes")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), r.stderr[-2000:]
    assert "pos_embed" in err[0] and "img_size" in err[0]
    after = _files(run, skip=(outputs.LOCK,))
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # every byte as it was
    assert after["result.json"] == before["result.json"]  # not even rewritten


def test_a_resume_that_fails_before_its_first_step_leaves_the_earlier_result(finished_run, tmp_path, monkeypatch,
                                                                               capsys):
    from mae_transfer.engine.trainer import Trainer

    run = _copy(finished_run, tmp_path / "run")
    before = _files(run)["result.json"]

    def broken(self):
        raise RuntimeError("broken before the first step")
    monkeypatch.setattr(Trainer, "train_one_epoch", broken)
    monkeypatch.setenv("MAE_TRANSFER_LOG_DIR", str(tmp_path / "logs"))
    line = refused(capsys, _argv(run, "epochs=2", "--resume"), code=1)
    assert line.startswith("internal error: RuntimeError: broken before the first step")
    assert _files(run)["result.json"] == before and results.read(run)["status"] == "ok"


def test_detectron2s_checkpoints_are_written_beside_a_hard_link_not_through_it(tmp_path):
    """fvcore's Checkpointer writes model_final.pth and last_checkpoint in place; the toolkit's writes them beside
    their names and renames, so a `cp -al` snapshot's resumed detection run leaves the original's files alone."""
    pytest.importorskip("detectron2")
    from mae_transfer.det.checkpoint import SafeCheckpointer

    orig, snap = tmp_path / "orig", tmp_path / "snap"
    orig.mkdir()
    SafeCheckpointer(torch.nn.Linear(2, 2), str(orig)).save("model_final", iteration=4)
    shutil.copytree(orig, snap, copy_function=os.link)
    before = {p.name: p.read_bytes() for p in orig.iterdir()}
    model = torch.nn.Linear(2, 2)
    torch.nn.init.ones_(model.weight)
    SafeCheckpointer(model, str(snap)).save("model_final", iteration=8)
    assert {p.name: p.read_bytes() for p in orig.iterdir()} == before
    ck = checkpoints.load_file(snap / "model_final.pth")
    assert ck["iteration"] == 8 and torch.equal(ck["model"]["weight"], torch.ones(2, 2))
    assert (snap / "last_checkpoint").read_text() == "model_final.pth"
