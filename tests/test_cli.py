"""One command grammar and strict inputs: every mistake below is one `error:` line (exit 2) before any
work starts, through the commands as users type them (in-process here; the subprocess tiers run them too)."""
import subprocess
import sys

import pytest
import torch

from mae_transfer.cli import COMMANDS, main


def _error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), (e.value.code, err)
    return err[0]


PRETRAIN_CASES = [
    ("norm_pix_loss=Ture", "expected true or false"), ("mask_ratio=1.5", "inside (0, 1)"),
    ("mask_ratio=0", "inside (0, 1)"), ("mask_ratio=-0.5", "inside (0, 1)"), ("batch_size=0", ">= 1"),
    ("blr=-1", "> 0"), ("lr=nan", "finite"), ("epochs=0", ">= 1"), ("epochs=1.5", "integer"),
    ("seed=abc", "integer"), ("betas=0.9", "tuple"), ("betas=(0.9,1.5)", "[0, 1)"), ("amp=fp8", "auto, bf16"),
    ("mask_strategy=foo", "random, block, grid"), ("num_workers=-1", ">= 0"), ("on_nonfinite=skip", "stop"),
    ("nrom_pix_loss=true", "did you mean 'norm_pix_loss'"), ("epochs", "not key=value"),
]


@pytest.mark.parametrize("override,says", PRETRAIN_CASES)
def test_pretrain_override_mistakes(capsys, tmp_path, override, says):
    assert says in _error(capsys, "pretrain", "--output-dir", str(tmp_path / "o"), override)
    assert not (tmp_path / "o").exists()  # nothing was started


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_device_that_does_not_exist(capsys, tmp_path):
    assert "no CUDA GPU" in _error(capsys, "pretrain", "--output-dir", str(tmp_path), "device=cuda")


@pytest.mark.parametrize("argv,says", [
    (["finetune", "mode=linprob"], "finetune, linprobe"),
    (["finetune", "--finetune-last-k", "-3"], ">= 0"),
    (["finetune", "--finetune-last-k", "99"], "has 12 blocks"),
    (["finetune", "finetune_last_k=4", "--finetune-last-k", "4"], "given twice"),
    (["pretrain", "--data-path", "a", "data_path=b"], "given twice"),
    (["pretrain", "--resume", "--allow-changes", "--seed", "x"], "a seed is an integer in [0, 4294967295]"),
    (["linprobe", "--config", "configs/finetune/vit_base.py"], "is a finetune config"),
    (["finetune", "smoothing=2"], "[0, 1]"),
    (["pretrain", "--config", "mae_vit_lage"], "did you mean 'mae_vit_large'"),
    (["pretrain", "--config", "no/such/file.py"], "config not found"),
    (["det", "--config", "vitdet"], "matches several det configs"),
])
def test_recipe_and_config_mistakes(capsys, tmp_path, argv, says):
    assert says in _error(capsys, *argv, "--output-dir", str(tmp_path / "o"))


def test_host_override_mistakes_name_the_closest_key(capsys, tmp_path):
    pytest.importorskip("detectron2")
    pytest.importorskip("mmseg")
    o = ["--output-dir", str(tmp_path / "o")]
    assert "did you mean 'train.max_iter'" in _error(capsys, "det", "--config", "tiny_cpu", *o, "train.max_itr=2")
    assert "unknown detectron2 config key 'nosuch'" in _error(capsys, "det", "--config", "tiny_cpu", *o, "nosuch.x=2")
    assert "expected true or false" in _error(capsys, "det", "--config", "tiny_cpu", *o, "train.amp.enabled=2")
    assert "expected an integer" in _error(capsys, "det", "--config", "tiny_cpu", *o, "train.max_iter=1.5")
    assert "did you mean 'train_cfg.max_iters'" in _error(capsys, "seg", "--config", "tiny_cpu", *o,
                                                          "train_cfg.max_iter=3")
    assert "unknown mmengine config key" in _error(capsys, "seg", "--config", "tiny_cpu", *o, "nosuch=1")


def test_unknown_command_and_visualize_ratio(capsys, tmp_path):
    assert "did you mean 'pretrain'" in _error(capsys, "pretrian")
    assert "inside (0, 1)" in _error(capsys, "visualize", "--checkpoint", "x.pth", "--images", ".", "--mask-ratio",
                                     "1.5")


def test_every_training_command_shows_the_same_grammar(capsys):
    shared = ("--config", "--output-dir", "--seed", "--resume", "--eval-only", "--num-gpus", "key=value")
    for name in ("pretrain", "finetune", "linprobe", "det", "seg"):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0 and all(f in text for f in shared), (name, text)
    main(["--help"])
    overview = capsys.readouterr().out
    assert all(name in overview for name in COMMANDS)


@pytest.mark.slow
def test_python_m_is_the_same_command():
    r = subprocess.run([sys.executable, "-m", "mae_transfer", "pretrain", "epochs=0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: epochs=0: must be >= 1"
