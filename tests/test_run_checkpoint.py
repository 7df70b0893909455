"""A run's own checkpoint-last.pth is read through its schema (schemas.RunCheckpoint): a damaged training state,
args, world size, epoch or step is one `error:` line naming the field when the run is resumed -- never an internal
error, never a run that "resumes" at epoch 10**6 and exits 0 -- and the run's folder is left as it was."""
import copy
import math
import shutil

import pytest
import torch
from conftest import FUZZ, refused, tree
from hypothesis import given, settings
from hypothesis import strategies as st

from mae_transfer.cli import main


def _files(folder) -> dict:
    """tree() with each file's and folder's modification time, but the lock, which names whoever held it last."""
    import os

    times = {str(p.relative_to(folder)): os.stat(p).st_mtime_ns for p in [folder, *folder.rglob("*")]}
    content = tree(folder)
    return {k: (content.get(k, "folder"), t) for k, t in times.items() if k != ".lock"}

TINY = ["img_size=32", "demo_samples=8", "batch_size=8", "effective_batch_size=8", "epochs=1", "warmup_epochs=0",
        "num_workers=0", "vis_freq=100", "save_freq=100"]


def _resume(out, *extra):
    return ["pretrain", "--config", "demo_tiny", "--output-dir", str(out), "--resume",
            *[x for x in TINY if x.split("=")[0] not in {e.split("=")[0] for e in extra}], *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    main(["pretrain", "--config", "demo_tiny", "--output-dir", str(out), *TINY])
    return out


FIELDS = ["epoch", "batch", "step", "loss_sum", "n_loss", "n_bad", "rollbacks", "segments"]
BAD = st.sampled_from([None, "3", -1, 1.5, True, math.nan, math.inf, 2**70, [1], {"a": 1}])
BAD_SEGMENTS = st.sampled_from([None, "x", [1], [{"layout": {}, "start": 0}], [{"start": -1}],
                                [{"layout": {"world_size": 0, "workers": 1, "batch_size": 8}, "start": 0}]])


@st.composite
def damage(draw) -> tuple:
    """(what, field, value): one damage to a checkpoint's non-tensor fields, applied by `_apply`."""
    how = draw(st.sampled_from(["state field", "state missing", "state extra", "state type", "segments", "epoch",
                                "step", "far epoch", "world_size", "args", "args batch", "sharded", "no optimizer",
                                "optimizer", "optimizer state", "optimizer groups", "optimizer hyper", "far batch",
                                "moment", "no train_state"]))
    field = draw(st.sampled_from(FIELDS[:-1]))
    value = draw({"state field": BAD, "state type": st.sampled_from([5, "state", [1, 2]]), "segments": BAD_SEGMENTS,
                  "epoch": st.sampled_from([5, -2, "0", None, 1.0]), "step": st.sampled_from([7, -1, "1", 1e3]),
                  "world_size": st.sampled_from([0, -1, "2", None, 2.0, True]),
                  "args": st.sampled_from([5, "args", [1]]),
                  "args batch": st.sampled_from([0, -8, "8", 8.5, [8], True]),
                  "sharded": st.sampled_from(["/etc", "../x", "shards/../../x", "", 5]),
                  "optimizer": st.sampled_from(["x", 5, [], {"state": {}}]),
                  "optimizer hyper": st.sampled_from([("betas", "xy"), ("betas", ("a", "b")), ("betas", (0.9,)),
                                                      ("lr", "1e-3"), ("weight_decay", None), ("eps", math.nan)]),
                  "far batch": st.sampled_from([5, 2**40]),
                  "moment": st.sampled_from([("exp_avg", "shape"), ("exp_avg_sq", "nan"), ("step", "negative")])
                  }.get(how, st.just(None)))
    if how == "state field" and field == "loss_sum" and type(value) in (int, float) and math.isfinite(value):
        value = "3"  # any finite number is a valid running sum
    return how, field, value


def _apply(obj: dict, how: str, field: str, value) -> dict:
    obj = {k: (copy.deepcopy(v) if k not in ("model", "optimizer") else v) for k, v in obj.items()}
    ts = obj["train_state"]
    if how == "state field":
        ts[field] = value
    elif how == "state missing":
        del ts[field]
    elif how == "state extra":
        ts["epochs_done"] = 1
    elif how == "state type":
        obj["train_state"] = value
    elif how == "segments":
        ts["segments"] = value
    elif how == "far epoch":  # consistent with itself, but far past what the run's steps allow
        ts["epoch"], obj["epoch"] = 10**6, 10**6 - 1
    elif how == "args batch":
        obj["args"]["batch_size"] = value
    elif how == "no optimizer":
        del obj["optimizer"]
    elif how == "optimizer":
        obj["optimizer"] = value
    elif how == "optimizer state":
        obj["optimizer"] = {k: v for k, v in obj["optimizer"].items() if k != "state"}
    elif how == "optimizer groups":
        obj["optimizer"] = {**obj["optimizer"], "param_groups": obj["optimizer"]["param_groups"][:1]}
    elif how == "optimizer hyper":
        groups = copy.deepcopy(obj["optimizer"]["param_groups"])
        groups[-1][value[0]] = value[1]
        obj["optimizer"] = {**obj["optimizer"], "param_groups": groups}
    elif how == "far batch":  # the epoch has one micro-batch
        ts["batch"] = value
    elif how == "moment":  # one parameter's AdamW state: another shape (a crash in the step), NaN, a negative step
        state = {i: dict(s) for i, s in obj["optimizer"]["state"].items()}
        key, kind = value
        first = state[next(iter(state))]
        first[key] = (torch.zeros(3) if kind == "shape" else torch.full_like(first[key], math.nan) if kind == "nan"
                      else torch.tensor(-5.0))
        obj["optimizer"] = {**obj["optimizer"], "state": state}
    elif how == "no train_state":
        del obj["train_state"]
    else:  # epoch, step, world_size, args, sharded
        obj[how] = value
    return obj


@pytest.mark.slow
def test_a_damaged_training_state_is_one_line_naming_the_field(run, tmp_path_factory, capsys):
    obj = torch.load(run / "checkpoint-last.pth", weights_only=True)

    @settings(parent=FUZZ, max_examples=50)  # 20 kinds of damage
    @given(case=damage())
    def check(case):
        work = tmp_path_factory.mktemp("case") / "run"
        shutil.copytree(run, work)
        torch.save(_apply(obj, *case), work / "checkpoint-last.pth")
        before = _files(work)
        line = refused(capsys, _resume(work, "epochs=2"))
        assert "checkpoint-last.pth" in line, line
        assert _files(work) == before
    check()


@pytest.mark.parametrize("case,named", [
    (("state field", "n_bad", -3), "train_state.n_bad"),
    (("moment", None, ("exp_avg", "shape")), "optimizer.state[0].exp_avg has shape (3,)"),
    (("moment", None, ("exp_avg_sq", "nan")), "optimizer.state[0].exp_avg_sq is not finite"),
    (("moment", None, ("step", "negative")), "optimizer.state[0].step is negative"),
    (("optimizer hyper", None, ("betas", ("a", "b"))), "optimizer.param_groups[1].betas"),
    (("far batch", None, 5), "train_state.batch"),
    (("no train_state", None, None), "train_state: missing")])
def test_the_field_is_named(run, tmp_path, capsys, case, named):
    obj = torch.load(run / "checkpoint-last.pth", weights_only=True)
    work = tmp_path / "run"
    shutil.copytree(run, work)
    torch.save(_apply(obj, *case), work / "checkpoint-last.pth")
    assert named in refused(capsys, _resume(work, "epochs=2"))


@pytest.mark.slow
def test_an_intact_checkpoint_still_resumes(run, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(run, work)
    main(_resume(work, "epochs=2"))
    assert torch.load(work / "checkpoint-last.pth", weights_only=True)["train_state"]["epoch"] == 2


@pytest.mark.slow
def test_a_refusal_in_every_process_of_num_gpus_2_is_one_line(run, tmp_path):
    """The processes torchrun starts each meet the damaged checkpoint: the launcher prints one `error:` line (not
    one per process and torchrun's traceback) and exits 2."""
    import subprocess
    import sys

    obj = torch.load(run / "checkpoint-last.pth", weights_only=True)
    obj["train_state"]["n_bad"] = -3
    work = tmp_path / "run"
    shutil.copytree(run, work)
    torch.save(obj, work / "checkpoint-last.pth")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-m", "mae_transfer", *_resume(work, "epochs=2", "demo_samples=16",
                                                                      "batch_size=4", "effective_batch_size=8"),
                        "--num-gpus", "2", "--allow-changes"], capture_output=True, text=True, timeout=300, env=env)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and "train_state.n_bad" in err[0], \
        r.stderr


def test_a_resume_compares_the_whole_recipe_by_value_and_names_what_changed(run, tmp_path, capsys):
    """The run's recipe is every config field's value: a resume that changes one (blr, or warmup_epochs by dropping
    its override) is refused naming it; the same values spelled otherwise, or the config's own value restated, are
    no change; how long it runs and the loader's workers may change."""
    import json

    work = tmp_path / "run"
    shutil.copytree(run, work)
    before = _files(work)
    line = refused(capsys, _resume(work, "epochs=2", "blr=2e-3"))
    assert "blr= " in line and "-> 0.002" in line and "--allow-changes" in line, line
    line = refused(capsys, [x for x in _resume(work, "epochs=2") if x != "warmup_epochs=0"])
    assert "warmup_epochs= 0 -> " in line, line
    assert _files(work) == before
    recipe = json.loads((work / "settings.json").read_text())["recipe"]
    main(_resume(work, "epochs=2", "num_workers=1", f"blr={float(recipe['blr']):.6e}", "seed=0",
                 f"mask_ratio={float(recipe['mask_ratio']):.6e}"))


def test_settings_without_a_recipe_are_not_trusted(run, tmp_path, capsys):
    """settings.json as an earlier version wrote it (no recipe), or hand-edited to drop it: the recipe cannot be
    checked, so the resume is refused unless --allow-changes (which records it)."""
    import json

    work = tmp_path / "run"
    shutil.copytree(run, work)
    settings = json.loads((work / "settings.json").read_text())
    del settings["recipe"]
    (work / "settings.json").write_text(json.dumps(settings))
    assert "without the run's recipe" in refused(capsys, _resume(work, "epochs=2", "blr=0.1"))
    main(_resume(work, "epochs=2", "--allow-changes"))
    assert json.loads((work / "settings.json").read_text())["recipe"]["blr"]


def test_resuming_a_finished_finetuning_keeps_its_result(tmp_path, capsys):
    """Resumed after its last epoch, a run has nothing to train and nothing new to measure: result.json keeps the
    metrics and checkpoint its first part recorded (it once became `top-1: null`)."""
    import itertools
    import json

    from PIL import Image

    data = tmp_path / "data"
    for split, c, i in itertools.product(("train", "val"), ("a", "b"), range(4)):
        (data / split / c).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (60 * i, 90 if c == "a" else 200, 0)).save(data / split / c / f"{i}.png")
    argv = ["finetune", "--data-path", str(data), "--output-dir", str(tmp_path / "ft"), "model=vit_tiny_patch8",
            "img_size=32", "num_classes=2", "epochs=1", "batch_size=4", "effective_batch_size=4", "num_workers=0",
            "warmup_epochs=0"]
    main(argv)
    first = json.loads((tmp_path / "ft" / "result.json").read_text())
    capsys.readouterr()
    main(argv + ["--resume"])
    assert "no evaluation in this run" in capsys.readouterr().out
    again = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert again["metrics"] == first["metrics"] and again["metrics"]["top-1"] is not None
    assert again["checkpoint"] == first["checkpoint"]
