"""bench/gpu_check.py --cpu-smoke: every step of the prepared GPU check runs at toy sizes on the CPU and
lands in the one JSON, so the script is known to work before device minutes are spent on it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path):
    pytest.importorskip("detectron2")
    pytest.importorskip("mmseg")
    r = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=1200)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    by = {s["step"]: s for s in data["steps"]}
    assert r.returncode == 0, json.dumps({k: (v["status"], v["tail"][-5:]) for k, v in by.items()}, indent=1)
    assert list(by) == ["env", "cuda_tests", "pretrain_speed", "data_path", "data_device", "det", "det_ckpt", "seg",
                        "finetune_speed", "fsdp"]
    assert by["data_path"]["metrics"]["fast/reference"] > 0 and "images/s" in by["data_device"]["metrics"][
        "ImageNet 500x375"]
    assert by["det"]["metrics"]["s/iter"] > 0 and by["det_ckpt"]["metrics"]["activation checkpointing"] is True
    assert by["seg"]["metrics"]["infer img/s"] > 0 and by["finetune_speed"]["metrics"]["img/s"] > 0
    assert by["fsdp"]["metrics"]["tiny_patch8 img/s"] > 0 and by["fsdp"]["metrics"]["tiny_patch8 MFU"] > 0
    assert any("ours / HF" in line for line in by["pretrain_speed"]["tables"])
    table = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--report",
                            str(tmp_path / "gpu_check.json")], capture_output=True, text=True, check=True).stdout
    assert "| det | ok |" in table and "s/iter 0.314" in table
