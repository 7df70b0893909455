"""Shards read right by any number of readers (issue 40): every layout with more readers (processes x loader
workers) than shards reads every sample once; a stalled piped source is one error naming it; a reader's error is
one line, never a worker's traceback; the `shards` writer claims its output and refuses what it cannot write."""
import io
import json
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from mae_transfer.data import SeededSamples
from mae_transfer.data.order import ShardSampler
from mae_transfer.data.sources import image_source, input_paths, labelled_source, open_shards
from mae_transfer.data.write_shards import write_shards
from mae_transfer.errors import DataError

PY = sys.executable
RUNS = 20


def _images(folder: Path, n: int, classes: int = 0) -> Path:
    """n 16x16 PNGs whose pixels name them exactly: image i is (i % 256, i // 256, 7)."""
    for i in range(n):
        d = folder / f"c{i % classes}" if classes else folder
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i % 256, i // 256, 7)).save(d / f"{i}.png")
    return folder


def _which(im) -> torch.Tensor:
    r, g, _ = im.getpixel((0, 0))
    return torch.tensor(r + 256 * g)


def _loader(ds, R: int, rank: int, batch: int):
    sampler = ShardSampler(ds.source, num_replicas=R, rank=rank, batch_size=batch, num_workers=2, seed=1)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=2, drop_last=True)


def _read_all(specs, n: int, R: int, batch: int) -> None:
    """RUNS epochs through fresh loaders of 2 workers for each of R ranks (a rank's loader after the other's, as
    ranks never share a reader). Before each, the main process reads the first sample of each shard the rank will
    read (as pretraining's reconstruction batch reads the first images): its workers fork from a reader with those
    shards open."""
    for spec in specs:
        ds = SeededSamples(image_source(spec, window=8), _which, seed=0)
        loaders = [_loader(ds, R, r, batch) for r in range(R)]
        for run in range(RUNS):
            seen, bad = Counter(), 0
            for loader in loaders:
                loader.sampler.set_epoch(run)
                for s in dict.fromkeys(ds.source.locate(i)[0] for _, i in loader.sampler):
                    ds[(run, ds.source.offsets[s])]
                for (x,), n_bad in loader:
                    seen.update(x.tolist())
                    bad += int(n_bad.sum())
            assert bad == 0 and sorted(seen) == list(range(n)) and set(seen.values()) == {1}, (spec, run, bad)


@pytest.mark.slow
def test_one_shard_two_workers(tmp_path):
    out = tmp_path / "sh"
    write_shards(_images(tmp_path / "imgs", 96), out, shard_size=1000, workers=1)
    (tmp_path / "list.txt").write_text("sh/shard-000000.tar\n")
    _read_all([out, str(out / "shard-{000000..000000}.tar"), tmp_path / "list.txt"], 96, R=1, batch=4)


@pytest.mark.slow
def test_three_shards_two_processes_two_workers(tmp_path):
    out = tmp_path / "sh"
    write_shards(_images(tmp_path / "imgs", 48), out, shard_size=16, workers=1)
    (tmp_path / "list.txt").write_text("".join(f"sh/shard-{k:06d}.tar\n" for k in range(3)))
    noindex = tmp_path / "noindex"  # the counts read from the shards, not from index.json
    noindex.mkdir()
    for k in range(3):
        (noindex / f"shard-{k:06d}.tar").write_bytes((out / f"shard-{k:06d}.tar").read_bytes())
    _read_all([out, str(out / "shard-{000000..000002}.tar"), tmp_path / "list.txt", noindex], 48, R=2, batch=4)


# --------------------------------------------------------------------------------------------- timeouts, errors
@pytest.mark.slow
def test_a_stalled_pipe_is_one_error_naming_it(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"^pipe:sleep 30: no data for 1 s \(data_timeout=1\)") as e:
        open_shards("pipe:sleep 30", timeout=1)
    assert "\n" not in str(e.value) and time.monotonic() - start < 15
    out = subprocess.run([PY, "-m", "mae_transfer", "pretrain", "--data-path", "pipe:sleep 30", "--output-dir",
                          str(tmp_path / "run"), "data_timeout=1.5"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: pipe:sleep 30: no data for 1.5 s") and not (tmp_path / "run").exists()


def test_a_stalled_url_is_one_error_naming_it(tmp_path):
    """Any fsspec URL (s3://, https://, ...): here a file system whose reads never answer."""
    import fsspec
    from fsspec.spec import AbstractFileSystem

    class Stuck(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            time.sleep(30)
            return 0

    class StuckFS(AbstractFileSystem):
        protocol = "stuck"

        def _open(self, path, mode="rb", **kwargs):
            return io.BufferedReader(Stuck())

    fsspec.register_implementation("stuck", StuckFS, clobber=True)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"^stuck://x/a\.tar: no data for 1 s") as e:
        open_shards("stuck://x/a.tar", timeout=1)
    assert "\n" not in str(e.value) and time.monotonic() - start < 15


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i, 0, 7)).save(buf, "PNG")
    return buf.getvalue()


def _first_error(ds) -> DataError:
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2,
                                         sampler=ShardSampler(ds.source, batch_size=4, num_workers=2))
    with pytest.raises(DataError) as e:
        list(loader)
    return e.value


def test_a_stall_in_a_loader_worker_is_one_line(tmp_path):
    """The command serves the count and the first-sample check, then stalls: met by a loader worker, it is the
    main process's one line naming the source, not the worker's traceback."""
    shard = _tar(tmp_path / "a.tar", [(f"{i:04d}.png", _png(i)) for i in range(40)])
    cmd = (f"pipe:n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/n; "
           f"if [ $n -lt 2 ]; then cat {shard}; else head -c 3000 {shard}; sleep 30; fi")
    (tmp_path / "list.txt").write_text(cmd + "\n")
    err = _first_error(SeededSamples(open_shards(tmp_path / "list.txt", timeout=1), _which))
    assert str(err).startswith(f"{cmd}: no data for 1 s") and "\n" not in str(err)


def test_unreadable_images_in_a_worker_are_one_line(tmp_path):
    _tar(tmp_path / "a.tar", [(f"{i:04d}.jpg", b"not a jpeg") for i in range(64)])
    err = _first_error(SeededSamples(open_shards(tmp_path / "a.tar"), _which))
    assert str(err).startswith("50 images in a row were unreadable") and "\n" not in str(err)


# --------------------------------------------------------------------------------------------- smaller roots
@pytest.mark.slow
def test_shards_of_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / f"imgs/{i}.jpg").write_bytes(b"not a jpeg")
    out = subprocess.run([PY, "-m", "mae_transfer", "shards", str(tmp_path / "imgs"), str(tmp_path / "sh"),
                          "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out
    assert "could be read" in out.stderr and not (tmp_path / "sh").exists()


def test_a_folder_named_like_a_shard_is_a_class_folder(tmp_path):
    data = tmp_path / "data"
    _images(data / "v1.tar", 3)
    _images(data / "v2", 2)
    src = labelled_source(data)
    assert len(src) == 5 and src.classes == ["v1.tar", "v2"]
    assert len(image_source(data)) == 5
    with pytest.raises(DataError, match="v1.tar is a folder, not a shard"):
        open_shards(str(data / "v{1,2}.tar"))


@pytest.mark.slow
def test_an_index_naming_a_class_twice_is_refused(tmp_path):
    out = tmp_path / "sh"
    write_shards(_images(tmp_path / "imgs", 6, classes=2), out, shard_size=10, workers=1)
    index = json.loads((out / "index.json").read_text())
    index["classes"] = ["c0", "c0"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="index.json: classes: lists 'c0' more than once"):
        labelled_source(out)


@pytest.mark.slow
def test_two_shards_commands_into_one_folder(tmp_path):
    """A writer that is still writing holds the folder: a second `shards` into it is one error line, and the first
    finishes with every shard."""
    src, out = _images(tmp_path / "imgs", 8), tmp_path / "sh"
    go = tmp_path / "go"  # the first writer waits for it in its first shard: the second comes while it writes
    slow = ("import os, time\nimport mae_transfer.data.write_shards as w\nfrom mae_transfer.cli import main\n"
            "real = w._write_one\n"
            "def slow(task):\n    print('writing', flush=True)\n"
            f"    for _ in range(600):\n        if os.path.exists({str(go)!r}):\n            break\n"
            "        time.sleep(0.1)\n    return real(task)\n"
            f"w._write_one = slow\nmain(['shards', {str(src)!r}, {str(out)!r}, '--shard-size', '2', '--workers', '1'])")
    first = subprocess.Popen([PY, "-c", slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout.readline() == "writing\n"
    second = subprocess.run([PY, "-m", "mae_transfer", "shards", str(src), str(out), "--shard-size", "2",
                             "--workers", "1"], capture_output=True, text=True, timeout=120)
    go.touch()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith("error: ") and "in use" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert len(open_shards(out)) == 8 and sorted(p.name for p in out.iterdir()) == [
        "index.json", *(f"shard-{k:06d}.tar" for k in range(4))]


@pytest.mark.slow
def test_a_list_of_shards_keeps_outputs_out_of_their_folder(tmp_path):
    out = tmp_path / "sh"
    write_shards(_images(tmp_path / "imgs", 8), out, shard_size=4, workers=1)
    (tmp_path / "list.txt").write_text("sh/shard-000000.tar\nsh/shard-000001.tar\n")
    assert str(out) in input_paths(tmp_path / "list.txt")
    assert str(out) in input_paths(str(out / "shard-{000000..000001}.tar"))
    before = sorted(p.name for p in out.iterdir())
    run = subprocess.run([PY, "-m", "mae_transfer", "pretrain", "--data-path", str(tmp_path / "list.txt"),
                          "--output-dir", str(out / "run"), "img_size=32", "batch_size=4", "effective_batch_size=4",
                          "epochs=1", "warmup_epochs=0", "num_workers=0", "max_steps=1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    assert sorted(p.name for p in out.iterdir()) == before
