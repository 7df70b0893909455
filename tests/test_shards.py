"""Data at scale: WebDataset shards (written by plain tarfile, as other tools write them, and by `mae-transfer
shards`), HF parquet / save_to_disk sources, the planned order of a sharded epoch and its exact resume."""
import contextlib
import io
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mae_transfer.data import SeededSamples
from mae_transfer.data.order import ShardSampler, window_shuffle
from mae_transfer.data.sources import image_source, labelled_source, open_shards
from mae_transfer.data.write_shards import PROGRESS, write_shards
from mae_transfer.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def colour(i: int):
    """Sample i's solid colour: its label can be read back from its pixels after any crop."""
    return (40 * (i % 6) + 20, 40 * (i // 6 % 6) + 20, 40 * (i // 36 % 6) + 20)


def jpeg(i: int, size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour(i)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def add(tf, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def wds(folder: Path, counts, labels=True, prefix="train") -> list:
    """Shards as a third-party tool writes them, by plain tarfile: KEY.jpg + KEY.cls (+ KEY.json, other members,
    folders and samples without an image, all of which a reader must pass over). Sample i is colour(i), .cls = i."""
    folder.mkdir(parents=True, exist_ok=True)
    i, paths = 0, []
    for s, n in enumerate(counts):
        paths.append(folder / f"{prefix}-{s:06d}.tar")
        with tarfile.open(paths[-1], "w") as tf:
            d = tarfile.TarInfo("imgs")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
            add(tf, f"imgs/meta{s}.txt", b"a sample without an image")
            for _ in range(n):
                key = f"imgs/{i:07d}"
                add(tf, f"{key}.jpg", jpeg(i))
                if labels:
                    add(tf, f"{key}.cls", f"{i}\n".encode())
                add(tf, f"{key}.json", json.dumps({"label": i, "w": 40}).encode())
                i += 1
    return paths


def test_third_party_shards_every_way_to_name_them(tmp_path):
    paths = wds(tmp_path / "s", [5, 7, 3])
    (tmp_path / "list.txt").write_text("# shards\n" + "\n".join(f"s/{p.name}" for p in paths) + "\n")
    specs = [tmp_path / "s/train-{000000..000002}.tar", tmp_path / "s", tmp_path / "list.txt",
             str(tmp_path / "s/train-{000000,000001,000002}.tar")]
    for spec in specs:
        src = open_shards(spec, labelled=True)
        assert len(src) == 15 and [s.count for s in src.shards] == [5, 7, 3], spec
    src = labelled_source(tmp_path / "s")
    for i in [0, 4, 5, 14, 6, 2]:  # out of order on purpose: still right
        img, label = src[i]
        assert label == i and img.getpixel((5, 5)) == pytest.approx(colour(i), abs=4)
    assert len(image_source(paths[1])) == 7 and image_source(paths[1])[3].size == (40, 32)
    with pytest.raises(DataError, match="shard not found"):
        open_shards(tmp_path / "s/train-{000000..000009}.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no shards"):
        open_shards(tmp_path / "empty")


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 9), min_size=1, max_size=6), R=st.integers(1, 3), W=st.integers(0, 3),
       B=st.integers(1, 4), window=st.integers(0, 6), epoch=st.integers(0, 3), stop=st.integers(0, 40),
       R2=st.integers(1, 3), W2=st.integers(0, 3), B2=st.integers(1, 4), window2=st.integers(0, 6))
def test_planned_epoch_each_sample_once_and_resume_anywhere(counts, R, W, B, window, epoch, stop, R2, W2, B2,
                                                            window2):
    """Every sample at most once per epoch over all ranks (all of them but the documented remainder); a resume with
    the same layout is the uninterrupted order's suffix; one with another layout (processes, workers, batch or
    shuffle window) finishes the epoch without repeating anything the first part consumed."""
    class Src:
        shards = [type("S", (), {"count": c})() for c in counts]
        offsets = list(np.cumsum([0] + counts))
    Src.window = window
    n = sum(counts)

    def orders(R, W, B, start=0, segments=None):
        out = []
        for r in range(R):
            s = ShardSampler(Src, R, r, seed=7, batch_size=B, num_workers=W)
            segs = s.set_epoch(epoch, start, segments)
            out.append([i for _, i in s])
            assert len(out[-1]) == len(s) == n // R - start
        return out, segs

    full, _ = orders(R, W, B)
    batches = [o[:len(o) // B * B] for o in full]  # what drop_last batches of B use
    used = [i for o in batches for i in o]
    assert len(used) == len(set(used)) and all(len(o) == n // R for o in full)
    assert len(used) >= n - R * B - n % R + R if n >= R * B else True
    steps = min(len(o) // B for o in full)
    k = min(stop, steps) * B  # stopped after k samples per rank (whole batches)
    resumed, segs = orders(R, W, B, start=k)
    assert resumed == [o[k:] for o in full]
    if n == 0 or (k * R) % R2:
        return
    Src.window = window2
    rest, _ = orders(R2, W2, B2, start=k * R // R2, segments=segs)
    consumed = {i for o in full for i in o[:k]}
    later = [i for o in rest for i in o]
    assert not consumed & set(later) and len(later) == len(set(later))


def test_window_shuffle_reads_ahead_at_most_a_window():
    ids = np.arange(200)
    out = window_shuffle(ids, 16, np.random.default_rng(0))
    assert sorted(out) == list(ids) and not np.array_equal(out, ids)
    assert all(out[t] < 16 + t for t in range(len(out)))  # the t-th emitted was among the first 16 + t read


def test_truncated_shard_is_counted_and_training_goes_on(tmp_path, caplog):
    paths = wds(tmp_path / "s", [6, 6])
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:len(data) // 2])  # cut in the middle of a member
    with caplog.at_level(logging.WARNING):  # counted without an index: the samples before the damage are used
        assert 3 <= open_shards(tmp_path / "s").shards[0].count < 6
    assert sum("is damaged" in r.message for r in caplog.records) == 1
    caplog.clear()
    write_index = [{"name": p.name, "samples": 6, "bytes": p.stat().st_size, "sha256": "0" * 64} for p in paths]
    (tmp_path / "s/index.json").write_text(json.dumps({"format": "mae-transfer shards", "version": 1,
                                                       "shards": write_index}))
    src = open_shards(tmp_path / "s", labelled=True)  # the index says 6 + 6: the damage is met while reading
    ds = SeededSamples(src, lambda im: torch.tensor(im.getpixel((0, 0))), seed=0)
    with caplog.at_level(logging.WARNING):
        items = [ds[(0, i)] for i in range(12)]
    bad = [i for i, (_, n_bad) in enumerate(items) if n_bad]
    assert 0 < len(bad) < 6 and all(i < 6 for i in bad)  # the first shard's tail only
    assert sum("is damaged" in r.message for r in caplog.records) == 1  # one line, not one per sample
    for i, ((x, label), n_bad) in enumerate(items):  # a replacement brings its own label with its image
        assert x.tolist() == pytest.approx(colour(label), abs=4) and (n_bad or label == i)


def test_pipe_and_unreachable_urls(tmp_path):
    paths = wds(tmp_path / "s", [4, 5])
    lst = tmp_path / "urls.txt"
    lst.write_text("\n".join(f"pipe:cat {p}" for p in paths))
    src = open_shards(lst, labelled=True)
    assert len(src) == 9 and [src[i][1] for i in range(9)] == list(range(9))
    for bad, msg in ((f"pipe:cat {tmp_path}/nothing-{{0..1}}.tar", "exited with status 1"),
                     ("https://127.0.0.1:9/train-{0..1}.tar", "cannot read the shard https://127.0.0.1:9/train-0"),
                     ("hfds/imagenet-1k", "not downloaded at run time")):
        with pytest.raises(DataError, match=msg) as e:
            open_shards(bad)
        assert "\n" not in str(e.value)


def _hf_table(n, offset=0):
    import pyarrow as pa
    image = pa.array([{"bytes": jpeg(offset + i), "path": None} for i in range(n)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # HF's Image feature
    return pa.table({"image": image, "label": pa.array(range(offset, offset + n), pa.int64())})


def test_hf_parquet_and_save_to_disk(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "pq/data").mkdir(parents=True)
    for k in range(2):  # the hub's layout: data/train-0000k-of-00002.parquet, several row groups each
        pq.write_table(_hf_table(7, 7 * k), tmp_path / f"pq/data/train-{k:05d}-of-00002.parquet", row_group_size=3)
    src = labelled_source(tmp_path / "pq")
    assert len(src) == 14 and [src[i][1] for i in (13, 0, 8, 9)] == [13, 0, 8, 9]
    assert src[10][0].getpixel((3, 3)) == pytest.approx(colour(10), abs=4)
    disk = tmp_path / "disk"
    disk.mkdir()
    with pa.ipc.new_stream(disk / "data-00000-of-00001.arrow", _hf_table(5).schema) as w:
        w.write_table(_hf_table(5), max_chunksize=2)
    (disk / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    src = labelled_source(disk)
    assert len(src) == 5 and [src[i][1] for i in range(5)] == list(range(5))


@pytest.mark.slow
def test_write_shards_index_and_a_killed_writer_resumes(tmp_path):
    root = tmp_path / "imgs"
    for i in range(23):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20), colour(i)).save(root / f"c{i % 3}/{i}.png")
    (root / "c1/broken.jpg").write_bytes(b"not a jpeg")
    full = write_shards(root, tmp_path / "a", shard_size=5, workers=2)
    assert (full["shards"], full["samples"], full["skipped"]) == (5, 23, 1)
    src = open_shards(tmp_path / "a", labelled=True)
    assert src.classes == ["c0", "c1", "c2"] and len(src) == 23
    labels = sorted(src[i][1] for i in range(23))
    assert labels == sorted(i % 3 for i in range(23))
    assert src.shards[0].count == 5 and "a/shard-000004.tar" in src.shards[-1].url
    # what a writer killed after two shards leaves: those two, its progress lines, a half-written third
    b = tmp_path / "b"
    b.mkdir()
    lines = (tmp_path / "a/index.json").read_text()
    entries = json.loads(lines)["shards"]
    settings_line = {"settings": json.loads(lines)["settings"]}
    (b / PROGRESS).write_text("\n".join(json.dumps(x) for x in [settings_line, *entries[:2]]) + '\n{"name": "sh')
    for e in entries[:2]:
        shutil.copy(tmp_path / "a" / e["name"], b / e["name"])
    (b / ".shard-000002.tar.x1.tmp.tar").write_bytes(b"half")
    out = subprocess.run([PY, "-m", "mae_transfer", "shards", str(root), str(b), "--shard-size", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (b / "index.json").read_text() == (tmp_path / "a/index.json").read_text()  # byte for byte: same shards
    assert sorted(p.name for p in b.iterdir()) == ["index.json"] + [f"shard-{k:06d}.tar" for k in range(5)]
    again = subprocess.run([PY, "-m", "mae_transfer", "shards", str(root), str(b), "--shard-size", "6"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error:") and again.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_killed_writer_takes_its_encoders_with_it(tmp_path):
    """SIGKILL (or the OOM killer) on `shards` must not leave encoders running on, writing into the folder that the
    next run resumes: each worker exits once its parent is gone."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(root / f"{i}.png")
    # one write per encoder (print writes the number and the newline apart: two encoders' lines could interleave)
    code = ("import os, sys, time\nimport mae_transfer.data.write_shards as w\n"
            "def stuck(task):\n    os.write(1, f'{os.getpid()}\\n'.encode())\n    time.sleep(120)\n"
            f"w._write_one = stuck\nw.write_shards({str(root)!r}, {str(tmp_path / 'out')!r}, shard_size=1, workers=2)")
    writer = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    encoders = [int(writer.stdout.readline()) for _ in range(2)]
    writer.kill()
    writer.wait()
    # the encoders hold the pipe's write end (forked): it reaches its end once the last of them has exited
    gone = bool(select.select([writer.stdout], [], [], 20)[0]) and writer.stdout.read() == ""
    for p in encoders if not gone else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    assert gone, "encoders outlived the killed writer"


@pytest.mark.slow
def test_labels_reaching_the_loss_over_two_processes(tmp_path):
    """2 gloo processes x 2 loader workers, through the loader the trainer builds: every sample once per epoch,
    each with its own .cls (its colour is its label), across epochs."""
    wds(tmp_path / "s", [10, 14, 9, 15])  # 48 samples = 2 ranks x 4 batches of 6
    script = f"""
import json, os, torch
from mae_transfer.data import SeededSamples
from mae_transfer.data.sources import labelled_source
from mae_transfer.engine.common import TrainConfig, train_loader
from mae_transfer.engine.distributed import init_distributed
info = init_distributed("cpu")
cfg = TrainConfig(batch_size=6, effective_batch_size=12, num_workers=2, shuffle_window=5, seed=3)
ds = SeededSamples(labelled_source({str(tmp_path / 's')!r}, window=5), lambda im: torch.tensor(im.getpixel((1, 1))))
loader, *_ = train_loader(ds, cfg, info)
seen = []
for epoch in range(2):
    loader.sampler.set_epoch(epoch)
    seen.append([(x.tolist(), y.tolist()) for (x, y), _ in loader])
json.dump(seen, open({str(tmp_path)!r} + f"/rank{{info.rank}}.json", "w"))
"""
    (tmp_path / "probe.py").write_text(script)
    from conftest import free_port
    out = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), str(tmp_path / "probe.py")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        labels = []
        for r in range(2):
            for x, y in ranks[r][epoch]:
                for pixel, label in zip(x, y):
                    assert pixel == pytest.approx(colour(label), abs=4)
                labels += y
        assert sorted(labels) == list(range(48))
    assert ranks[0][0] != ranks[0][1]  # each epoch its own order


@pytest.mark.slow
def test_pretrain_from_a_brace_pattern_sigkill_then_resume_is_bit_identical(tmp_path):
    """tools/pretrain.py on third-party shards named by a brace pattern, 2 persistent loader workers, checkpoint
    every step, SIGKILL at a random step (possibly in the second epoch): the resumed run equals the uninterrupted."""
    import random

    from conftest import kill_mid_epoch

    from mae_transfer import checkpoints
    wds(tmp_path / "s", [20, 17, 23, 12], labels=False)  # 72 samples: 9 steps of 8 an epoch
    args = [PY, str(ROOT / "tools/pretrain.py"), "--config", "demo_tiny", "--data-path",
            str(tmp_path / "s/train-{000000..000003}.tar"), "img_size=32", "batch_size=8", "effective_batch_size=8",
            "epochs=2", "warmup_epochs=1", "num_workers=2", "vis_freq=100", "save_freq=100", "ckpt_every_steps=1",
            "shuffle_window=10"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    out = subprocess.run([*args, "--output-dir", str(ref)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    kill_mid_epoch([*args, "--output-dir", str(run)], run / "checkpoint-last.pth", random.randrange(2, 17))
    out = subprocess.run([*args, "--output-dir", str(run), "--resume"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = (checkpoints.load_file(d / "checkpoint-last.pth") for d in (ref, run))
    assert a["step"] == b["step"] == 18 and a["train_state"] == b["train_state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    torch.testing.assert_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=0, atol=0)


@pytest.mark.slow
def test_finetune_from_shards_matches_class_folders(tmp_path):
    """The same images as class folders and as `mae-transfer shards` output: top-1 after a short fine-tuning, over
    3 seeds each, differ by no more than the seed-to-seed spread (the larger of the two ranges, at least one
    validation image); the shards' mean top-1 is also far above chance (labels that did not belong to their
    images would put it near 33 %)."""
    from test_finetune import SMALL, _cfg, _folder

    from mae_transfer.engine.finetune import train
    folders = _folder(tmp_path / "f", n=12)
    shards = tmp_path / "sh"
    for split in ("train", "val"):
        write_shards(folders / split, shards / split, shard_size=7, workers=1)
    extra = ["epochs=4", "lr=2e-3", "drop_path=0", "mixup=0", "cutmix=0", "smoothing=0", "aa=None", "reprob=0"]
    acc = {k: [train(_cfg(tmp_path / f"{k}{s}", f"data_path={d}", f"seed={s}", *extra))["acc1"] for s in range(3)]
           for k, d in (("folders", folders), ("shards", shards))}
    spread = max(max(v) - min(v) for v in acc.values())
    assert abs(np.mean(acc["shards"]) - np.mean(acc["folders"])) <= max(spread, 100 / 36), acc
    assert np.mean(acc["shards"]) > 60, acc
    assert SMALL  # the tiny ViT of the fine-tuning tests


def test_hostile_sources_are_one_line_each(tmp_path):
    """What a hostile review sent: each is one DataError naming the problem, not a traceback, a hang or a quiet
    misreading."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    wds(tmp_path / "s", [3])
    (tmp_path / "nolab").mkdir()
    with tarfile.open(tmp_path / "nolab/a.tar", "w") as tf:
        add(tf, "k.jpg", jpeg(0))
        add(tf, "k.cls", b"-1")
    for name, table in (("listimg", pa.table({"image": [[1, 2]], "label": [0]})),
                        ("strlabel", pa.table({"image": [jpeg(0)], "label": ["cat"]})),
                        ("pathonly", pa.table({"image": pa.array([{"bytes": None, "path": "x.jpg"}], pa.struct(
                            [("bytes", pa.binary()), ("path", pa.string())])), "label": [0]}))):
        pq.write_table(table, tmp_path / f"{name}.parquet")
    (tmp_path / "br{x}/train").mkdir(parents=True)  # an image folder whose name has braces is a folder
    Image.new("RGB", (8, 8)).save(tmp_path / "br{x}/train/a.png")
    assert len(image_source(tmp_path / "br{x}/train")) == 1
    (tmp_path / "mixed/cls").mkdir(parents=True)  # a stray .tar beside class folders: which did the user mean?
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed/cls/a.png")
    shutil.copy(tmp_path / "s/train-000000.tar", tmp_path / "mixed/backup.tar")
    (tmp_path / "loose").mkdir()  # a loose image beside the shards: also ambiguous
    shutil.copy(tmp_path / "s/train-000000.tar", tmp_path / "loose/a.tar")
    Image.new("RGB", (8, 8)).save(tmp_path / "loose/stray.png")
    (tmp_path / "later").mkdir()  # only the second parquet file lacks the image column
    pq.write_table(pa.table({"image": [jpeg(0)]}), tmp_path / "later/a.parquet")
    pq.write_table(pa.table({"picture": [jpeg(0)]}), tmp_path / "later/b.parquet")
    (tmp_path / "hf").mkdir()  # save_to_disk's state.json with a data file that climbs out of the folder
    (tmp_path / "hf/state.json").write_text(json.dumps({"_data_files": [{"filename": "../../etc/passwd"}]}))
    (tmp_path / "dd/train").mkdir(parents=True)  # a DatasetDict: which split?
    (tmp_path / "dd/dataset_dict.json").write_text('{"splits": ["train"]}')
    shutil.copy(tmp_path / "hf/state.json", tmp_path / "dd/train/state.json")
    index = {"format": "mae-transfer shards", "version": 1,
             "shards": [{"name": "train-000000.tar", "samples": 10**13, "sha256": "0" * 64,
                         "bytes": (tmp_path / "s/train-000000.tar").stat().st_size}]}
    (tmp_path / "s/index.json").write_text(json.dumps(index))
    cases = [(lambda: labelled_source(tmp_path / "nolab"), "no usable label"),
             (lambda: image_source(tmp_path / "listimg.parquet"), "not image bytes"),
             (lambda: labelled_source(tmp_path / "strlabel.parquet"), "integer `label` column"),
             (lambda: image_source(tmp_path / "pathonly.parquet"), "only paths"),
             (lambda: image_source(str(tmp_path / "s/train-{0..1}}.tar")), "unbalanced braces"),
             (lambda: image_source(tmp_path / "mixed"), "both .tar"),
             (lambda: image_source(tmp_path / "loose"), "both .tar"),
             (lambda: image_source(tmp_path / "later"), "b.parquet"),
             (lambda: image_source(tmp_path / "hf"), "state.json"),
             (lambda: image_source(tmp_path / "dd"), "DatasetDict.*dd/train"),
             (lambda: image_source(tmp_path / "s"), "cannot hold 10000000000000 samples")]
    for make, msg in cases:
        with pytest.raises(DataError, match=msg) as e:
            make()
        assert "\n" not in str(e.value)
    chatty = tmp_path / "chatty.txt"  # a command that writes much to stderr (curl's progress) must not hang
    chatty.write_text(f"pipe:head -c 200000 /dev/zero >&2; cat {tmp_path}/s/train-000000.tar\n")
    (tmp_path / "s/index.json").unlink()
    assert len(open_shards(chatty)) == 3
