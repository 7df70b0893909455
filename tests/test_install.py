"""The toolkit outside its checkout: a wheel built from the repository, installed with its command into a
fresh environment (reusing the heavy dependencies already installed), used from another directory."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sh(cmd, cwd, env=None, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(env python, env bin dir, a work directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # build from a copy: an in-tree build would leave build/ and egg-info in the checkout
    shutil.copytree(ROOT / "mae_transfer", src / "mae_transfer", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "wheel", src],
        cwd=tmp)
    (wheel,) = (tmp / "wheel").glob("mae_transfer-*.whl")
    env_dir = tmp / "env"
    _sh([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=tmp)
    py = env_dir / "bin" / "python"
    site = Path(_sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    # the heavy dependencies of this interpreter (torch, timm, detectron2, mmseg), but not its mae_transfer
    here = Path(sysconfig.get_paths()["purelib"])
    extra = [str(here)] + [line for p in here.glob("*.pth") if not p.name.startswith("__editable__")
                           for line in p.read_text().splitlines() if line.startswith("/")]
    (site / "deps.pth").write_text("\n".join(extra) + "\n")
    _sh([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel], cwd=tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    return py, env_dir / "bin", work


@pytest.mark.slow
def test_wheel_installs_commands_configs_and_registry(installed):
    py, bindir, work = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _sh([py, "-c", "import mae_transfer; print(mae_transfer.__file__)"], cwd=work, env=env)
    assert str(ROOT) not in where and str(bindir.parent) in where  # the installed copy, not the checkout
    out = work / "pre"
    _sh([bindir / "mae-transfer", "pretrain", "--config", "demo_tiny", "--output-dir", out, "epochs=1",
         "img_size=32", "demo_samples=32", "batch_size=16", "effective_batch_size=16", "num_workers=1"],
        cwd=work, env=env)
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "ok" and res["config"].startswith(str(bindir.parent))
    assert (out / "checkpoint-last.pth").exists()
    for cmd in ("det", "seg"):
        text = _sh([bindir / "mae-transfer", cmd, "--help"], cwd=work, env=env)
        assert all(f in text for f in ("--config", "--output-dir", "--seed", "--resume", "--eval-only", "--num-gpus"))
    _sh([py, "-m", "mae_transfer", "finetune", "--help"], cwd=work, env=env)  # what torchrun runs
    probe = """
import timm, mae_transfer.models
from detectron2.config import LazyConfig
from detectron2.modeling import BACKBONE_REGISTRY
import mae_transfer.det.backbone
import mae_transfer.seg
from mmseg.registry import MODELS
from mae_transfer.engine.config import resolve_config
m = timm.create_model("mae_vit_tiny_patch8")
assert BACKBONE_REGISTRY.get("build_mae_vit_sfp_backbone") and MODELS.get("MAEViT")
det = resolve_config("vitdet_b_100ep", "det")
assert LazyConfig.load(str(det)).train.max_iter == 184375
print(det, resolve_config("mae_vit_large", "pretrain"))
"""
    paths = _sh([py, "-c", probe], cwd=work, env=env).split()
    assert all(p.startswith(str(bindir.parent)) for p in paths), paths
