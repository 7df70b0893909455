"""What is this file? One answer for every command that takes weights.

    kind = identify("output/det/model_final.pth")        # "detector"
    sd = expect("x.pth", ("detector",), "predict det")   # the state dict, or one CheckpointError line that
                                                          # says what x.pth is and which command makes a detector

Kinds: an MAE pretraining checkpoint (encoder + decoder), an encoder (official encoder-only file, timm /
DeiT / MoCo v3 / DINO / BEiT layouts), a fine-tuned classifier, a trained detector (detectron2, Mask or Faster
R-CNN), a trained segmenter (mmseg), an export folder. Decided from the tensor names alone, after the safe
reader (`checkpoints.load_file`), so nothing is unpickled to find out."""
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

from . import checkpoints
from .errors import CheckpointError

KINDS: Dict[str, Tuple[str, str]] = {  # kind -> (what it is, the command that makes one)
    "mae": ("an MAE pretraining checkpoint (encoder + decoder)", "mae-transfer pretrain"),
    "encoder": ("a pretrained encoder", "mae-transfer pretrain, or an official MAE file"),
    "classifier": ("a fine-tuned classifier", "mae-transfer finetune / linprobe"),
    "detector": ("a trained detector", "mae-transfer det"),
    "segmentor": ("a trained segmenter", "mae-transfer seg"),
    "export": ("an export folder", "mae-transfer export"),
}
BACKBONES = ("mae", "encoder", "classifier", "detector", "segmentor")  # what `--backbone` takes (the trunk)


def kind_of(sd: checkpoints.StateDict) -> str:
    """The kind of a state dict (already unwrapped: `checkpoints.unwrap`)."""
    keys = list(sd)
    if any(k.startswith("roi_heads.") or k.startswith("proposal_generator.") for k in keys):
        return "detector"
    if any(k.startswith(("decode_head.", "auxiliary_head.")) for k in keys):
        return "segmentor"
    fmt = checkpoints.detect_format(sd)  # an unknown layout is one CheckpointError here
    if fmt == "hf" and any(k.startswith("decoder.") for k in keys):
        return "mae"
    if any(k.startswith(("decoder_", "mask_token")) for k in keys):
        return "mae"
    if fmt == "official" and any(k.startswith("head.") for k in keys):
        return "classifier"
    return "encoder"


def read(path, peek: bool = False) -> Tuple[str, Any, checkpoints.StateDict]:
    """(kind, the file's object, its state dict) of the file or folder at `path`, read once (`peek`: names and
    shapes only, the data left on disk: `checkpoints.load_file`)."""
    p = Path(path)
    if p.is_dir() and (p / "export.json").is_file():
        return "export", None, {}
    obj = checkpoints.load_file(p, peek)
    sd = checkpoints.unwrap(obj)
    return kind_of(sd), obj, sd


def identify(path) -> str:
    """The kind of the file or folder at `path`."""
    return read(path)[0]


def describe(kind: str) -> str:
    what, maker = KINDS[kind]
    return f"{what} (made by {maker})"


def expect(path, kinds: Sequence[str], command: str, whole: bool = False, peek: bool = False):
    """The state dict at `path` (with `whole`: the file's object and its state dict) if it is one of `kinds`;
    else one CheckpointError saying what it is and which command makes what `command` needs."""
    got, obj, sd = read(path, peek)
    if got not in kinds:
        need = " or ".join(describe(k) for k in kinds)
        raise CheckpointError(f"{path} is {describe(got)}; `{command}` needs {need}")
    return (obj, sd) if whole else sd


def check_backbone(path, kinds: Sequence[str], command: str) -> checkpoints.StateDict:
    """What a launcher checks of a checkpoint before it claims its folder or starts processes: readable, safe,
    a known layout, one of `kinds` -- from its names and shapes (`peek`), not its data, which each process then
    reads once. Returns the peeked state dict (names and shapes; tensors not to be computed with)."""
    return expect(path, kinds, command, peek=True)
