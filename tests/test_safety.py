"""Checkpoints are untrusted input: a malicious file (zip or legacy torch pickle, a raw pickle) given to any
option of any command that takes weights is one `error:` line, and nothing in it runs. Damaged, empty
and non-dict files are one line too."""
import os
import pickle

import pytest
import torch

from mae_transfer.cli import main


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    marker = d / "EXECUTED"
    obj = {"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}
    torch.save(obj, d / "zip.pth")
    torch.save(obj, d / "legacy.pth", _use_new_zipfile_serialization=False)
    with open(d / "raw.pth", "wb") as f:
        pickle.dump(obj, f)
    (d / "empty.pth").write_bytes(b"")
    torch.save(torch.zeros(3), d / "tensor.pth")
    torch.save([1, 2], d / "list.pth")
    (d / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (d / "huge.safetensors").write_bytes((10**15).to_bytes(8, "little") + b"{}")
    (d / "img").mkdir()
    from PIL import Image
    Image.new("RGB", (64, 64), "red").save(d / "img" / "a.png")
    return d, marker


def _commands(ckpt, d):
    o = ["--output-dir", str(d / "out")]
    cmds = [["pretrain", "--eval-only", ckpt, *o], ["finetune", "--backbone", ckpt, *o],
            ["finetune", "--eval-only", ckpt, *o], ["linprobe", "--backbone", ckpt, *o],
            ["convert", ckpt, "--to", "hf", str(d / "hf")],
            ["visualize", "--checkpoint", ckpt, "--images", str(d / "img")],
            ["evaluate", ckpt, "random", "--output-dir", str(d / "ev")]]
    try:
        import detectron2  # noqa: F401
        cmds += [["det", "--config", "tiny_cpu", "--backbone", ckpt, *o], ["det", "--config", "tiny_cpu", "--eval-only",
                 ckpt, *o], ["predict", "det", str(d / "img"), "--config", "tiny_cpu", "--weights", ckpt]]
    except ImportError:
        pass
    try:
        import mmseg  # noqa: F401
        cmds += [["seg", "--config", "tiny_cpu", "--backbone", ckpt, *o], ["seg", "--config", "tiny_cpu", "--eval-only",
                 ckpt, *o], ["predict", "seg", str(d / "img"), "--config", "tiny_cpu", "--weights", ckpt]]
    except ImportError:
        pass
    return cmds


@pytest.mark.parametrize("name,says", [("zip.pth", "refused to unpickle 'posix.system'"),
                                       ("legacy.pth", "refused to unpickle 'posix.system'"),
                                       ("raw.pth", "a plain pickle"), ("empty.pth", "empty file"),
                                       ("tensor.pth", "holds a Tensor"), ("list.pth", "holds a list"),
                                       ("bad.safetensors", "not a readable .safetensors"),
                                       ("huge.safetensors", "not a readable .safetensors")])
def test_every_weight_option_refuses_in_one_line(capsys, bad_files, name, says):
    d, marker = bad_files
    for argv in _commands(str(d / name), d):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), (argv, err)
        if name in ("zip.pth", "legacy.pth", "raw.pth", "empty.pth") or "safetensors" in name:
            assert says in err[0], (argv, err)
        assert not marker.exists(), argv
        assert not list((d / "out").rglob("result.json")) and not (d / "hf").exists()
