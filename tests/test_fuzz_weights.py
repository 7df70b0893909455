"""Property-based tests (hypothesis), continued from test_fuzz.py: checkpoints of each layout and export.json,
damaged, given to the commands as users type them: exit 2, one `error:` line, no traceback, nothing written."""
import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import FUZZ, refused, tree
from hypothesis import given
from hypothesis import strategies as st

from mae_transfer import checkpoints
from mae_transfer.cli import main


# ------------------------------------------------------------------------------------ checkpoint files
def _layouts(tmp: Path) -> dict:
    """A seeded tiny checkpoint in each layout the toolkit reads, as files."""
    from mae_transfer.models.mae import mae_vit_tiny_patch8

    torch.manual_seed(0)
    sd = mae_vit_tiny_patch8().state_dict()
    enc = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    files = {"official": {"model": sd}, "encoder": {"model": enc},
             "moco": {"state_dict": {f"module.base_encoder.{k}": v for k, v in enc.items()}},
             "dino": {"teacher": {f"backbone.{k}": v for k, v in enc.items()}},
             "deit": {"model": {**enc, "dist_token": torch.zeros(1, 1, 192), "head.weight": torch.zeros(3, 192),
                                "head_dist.weight": torch.zeros(3, 192),
                                "pos_embed": torch.zeros(1, 2 + 16, 192)}}}
    out = {}
    for name, obj in files.items():
        torch.save(obj, tmp / f"{name}.pth")
        out[name] = tmp / f"{name}.pth"
    return out


@st.composite
def damaged_checkpoint(draw, obj: dict):
    """(bytes of a damaged checkpoint, whether a reader must refuse it outright)."""
    import io

    obj = copy.deepcopy(obj)
    key = next(k for k in ("model", "state_dict", "teacher") if k in obj)
    sd = obj[key]
    name = draw(st.sampled_from(sorted(sd)))
    how = draw(st.sampled_from(["drop", "reshape", "nan", "junk value", "rename all", "bytes", "empty", "not a dict"]))
    must = how in ("nan", "bytes", "empty", "not a dict", "rename all")
    if how == "drop":
        del sd[name]
    elif how == "reshape":
        sd[name] = torch.zeros(3, 5, 7)
    elif how == "nan":
        sd[name] = torch.full((4,), float("nan"))
    elif how == "junk value":
        sd[name] = draw(st.sampled_from(["x", 3, None, [1, 2]]))
    elif how == "rename all":
        obj[key] = {f"zz{i}.w": v for i, v in enumerate(sd.values())}
    elif how == "not a dict":
        obj = [torch.zeros(2)]
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if how == "bytes":
        data = data[: draw(st.integers(1, len(data) - 1))]
    elif how == "empty":
        data = b""
    return data, must


@pytest.mark.parametrize("layout", ["official", "encoder", "moco", "dino", "deit"])
def test_damaged_checkpoints_of_each_layout_are_one_line_never_a_traceback(layout, tmp_path_factory, capsys):
    src = _layouts(tmp_path_factory.mktemp("layouts"))[layout]
    obj = torch.load(src, weights_only=True)

    @FUZZ
    @given(case=damaged_checkpoint(obj))
    def check(case):
        data, must_refuse = case
        work = tmp_path_factory.mktemp("case")
        (work / "x.pth").write_bytes(data)
        capsys.readouterr()
        try:
            main(["convert", str(work / "x.pth"), "--to", "timm", str(work / "out.pth")])
            code = 0
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert (work / "x.pth").read_bytes() == data  # the input is never touched
        if code == 0:  # a damage convert can carry through (a dropped decoder tensor): what it wrote reads back
            assert not must_refuse
            checkpoints.read_state_dict(work / "out.pth")
        else:
            assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
            assert not (work / "out.pth").exists()
    check()


def test_a_distilled_deit_loads_as_its_encoder(tmp_path):
    sd = checkpoints.read_state_dict(_layouts(tmp_path)["deit"])
    assert "dist_token" not in sd and not any(k.startswith("head_dist") for k in sd)
    assert sd["pos_embed"].shape == (1, 1 + 16, 192)


# ------------------------------------------------------------------------------------------ export.json
@st.composite
def broken_export_meta(draw, meta: dict) -> bytes:
    obj = copy.deepcopy(meta)
    how = draw(st.sampled_from(["drop", "type", "path", "kind", "sha", "graphs", "bytes", "list", "extra"]))
    if how == "drop":
        del obj[draw(st.sampled_from(["kind", "weights", "size", "graphs", "files", "sha256"]))]
    elif how == "type":
        obj[draw(st.sampled_from(["size", "opset", "files", "graphs", "sha256"]))] = draw(
            st.sampled_from(["x", None, [1], 1.5, -3]))
    elif how == "path":
        obj[draw(st.sampled_from(["weights", "config"]))] = draw(st.sampled_from(["../mae.pth", "/etc/hostname",
                                                                                  "sub/x.pth", ""]))
    elif how == "kind":
        obj["kind"] = draw(st.sampled_from(["classifier", "", None, 3]))
    elif how == "sha":
        obj["sha256"] = {k: draw(st.sampled_from(["0" * 63, "x" * 64, None])) for k in obj["sha256"]}
    elif how == "graphs":
        obj["files"]["pt2"] = {"other": "model.pt2"}
    elif how == "list":
        obj = [obj]
    elif how == "extra":
        obj["unknown"] = 1
    data = json.dumps(obj).encode()
    if how == "bytes":
        data = data[: draw(st.integers(0, len(data) - 2))]
    return data


@pytest.mark.slow
def test_every_broken_export_json_is_one_line(encoder_export, capsys):
    meta_file = encoder_export / "export.json"
    original = meta_file.read_bytes()

    @FUZZ
    @given(data=broken_export_meta(json.loads(original)))
    def check(data):
        meta_file.write_bytes(data)
        before = {k: v for k, v in tree(encoder_export).items() if k != ".lock"}
        refused(capsys, ["export", "encoder", "--output-dir", str(encoder_export), "--check-only", "--max-images", "1"])
        refused(capsys, ["predict", "seg", str(Path(__file__)), "--runtime", "torch-export", "--weights",
                         str(encoder_export), "--output-dir", str(encoder_export.parent / "p")])
        assert {k: v for k, v in tree(encoder_export).items() if k != ".lock"} == before
        assert not (encoder_export.parent / "p").exists()
    try:
        check()
    finally:
        meta_file.write_bytes(original)
