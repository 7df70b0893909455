"""Every checkpoint format read safely into one layout, and written atomically.

Canonical layout = the official MAE / timm parameter names (`blocks.0.attn.qkv.weight`, ...); every reader
returns it (the names of each host's layout: layouts.py), and every host adapter starts from it (hosts.py):

    official / timm / DeiT / MoCo v3 / DINO / BEiT / mae-transfer  --(read_state_dict)-->  canonical
    HF ViTMAE (4.x and 5.x), detectron2 ViTDet, mmseg MAE          --^
Loading never unpickles code: `.pth` files go through `torch.load(weights_only=True)` with a short
allow-list (the `argparse.Namespace` that official training checkpoints carry); anything else is
refused with `CheckpointError` instead of being executed.
"""
import argparse
import importlib.util
import json
import logging
import os
import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as st_load
from safetensors.torch import save as save_bytes

from . import beit, outputs
from .env import mmengine_checkpoint_types
from .errors import CheckpointError  # noqa: F401  (re-exported)
from .layouts import HF_CONFIG, from_detectron2, from_hf, from_mmseg

_logger = logging.getLogger("mae_transfer")

StateDict = Dict[str, torch.Tensor]

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}  # a safetensors header's dtype names (others are read as float32 when peeked)

# Types that official checkpoints pickle besides tensors; nothing here can run code when loaded.
SAFE_GLOBALS: List[Any] = [argparse.Namespace]


# ----------------------------------------------------------------------------------------- reading
def load_file(path, peek: bool = False) -> Dict[str, Any]:
    """Read a `.pth`/`.pt`/`.bin` (safely) or `.safetensors` file, or an HF model directory (its
    model.safetensors / pytorch_model.bin), into a dict.

    `peek`: the same dict (names, shapes, the records beside them) without reading the tensors' data -- a
    .pth through torch's memory map (the unpickler runs as for a read, so an unsafe file is refused just
    the same), a .safetensors file's header as meta tensors: what a launcher checks before the processes
    that read the weights start."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{path} is a directory without model.safetensors or pytorch_model.bin")
        obj = load_file(found[0], peek)
        if (path / "config.json").is_file():  # an HF model directory: its config says what model it holds
            obj = {"model": unwrap(obj), "model_args": hf_model_args(json.loads((path / "config.json").read_text()))}
        return obj
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file (0 bytes), not a checkpoint")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, peek)
    try:
        with allowing(SAFE_GLOBALS + _host_types()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4": the refusal below says what matters
            # torch maps only its zip format (every torch.save since 1.6); an older file is read whole
            return torch.load(path, map_location="cpu", weights_only=True, mmap=peek and zipfile.is_zipfile(path))
    except Exception as e:  # UnpicklingError, or a truncated/corrupt archive
        msg = str(e)
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # a pickle's PROTO opcode (protocol >= 2)
        if "Unsupported operand" in msg and pickled:
            raise CheckpointError(f"{path}: a plain pickle, not a torch checkpoint: refused (unpickling it could run "
                                  f"code). Re-save the weights with torch.save or as .safetensors.") from None
        bad = re.search(r"(?:Unsupported global:\s*|GLOBAL\s+)(?:GLOBAL\s+)?([\w.]+)", msg)  # torch: "...: GLOBAL a.B"
        if bad:
            raise CheckpointError(
                f"{path}: refused to unpickle '{bad.group(1)}' -- a checkpoint that needs it could run "
                f"code on load. Re-save the weights as a plain state dict or .safetensors.") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        detail = detail.group(1) if detail else msg.strip().splitlines()[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail})") from None


def _load_safetensors(path: Path, peek: bool = False):
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if peek:  # the header: names, shapes and dtypes
                sd = {k: torch.empty(f.get_slice(k).get_shape(), dtype=_ST_DTYPES.get(f.get_slice(k).get_dtype()),
                                     device="meta") for k in f.keys()}
        if not peek:
            sd = st_load(str(path))
        model_args = json.loads(meta["model_args"]) if meta.get("model_args") else None
    except (SafetensorError, OSError, ValueError) as e:  # bad, huge or empty header; truncated data
        raise CheckpointError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
    return {"model": sd, "model_args": model_args} if model_args else sd


@contextmanager
def allowing(types: List[Any]):
    """torch's `safe_globals` block for those of `types` not allowed already: leaving torch's block removes
    what it added, so an enclosing block (seg's mmengine_checkpoints, around the runner) keeps its own."""
    allowed = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([t for t in types if t not in allowed]):
        yield


def _host_types() -> List[Any]:
    """The data types a host library's own checkpoints hold, where that library is installed: mmengine's
    message hub in a segmentation run's iter_N.pth (see seg/compat.py)."""
    if importlib.util.find_spec("mmengine") is None:
        return []
    return mmengine_checkpoint_types()


def unwrap(obj: Dict[str, Any]) -> StateDict:
    """The state dict inside a checkpoint dict (`model`, `state_dict`, or the dict itself),
    without a DDP `module.` prefix."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict or a dict with 'model'")
    chosen = next((k for k in ("model", "state_dict", "module", "teacher", "student") if isinstance(obj.get(k), dict)),
                  None)  # DINO's training checkpoint: the teacher (the network DINO evaluates), else the student
    obj = obj[chosen] if chosen else obj
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("no tensors found in checkpoint (expected 'model' or a state dict)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("base_encoder.") for k in sd):  # MoCo v3: the query encoder, without its projection head
        sd = _strip(sd, "base_encoder.", "MoCo v3", "momentum encoder, predictor and projection head")
    elif chosen in ("teacher", "student") and any(k.startswith("backbone.") for k in sd):
        sd = _strip(sd, "backbone.", f"DINO ({chosen})", "DINO projection head")
    return sd


def _strip(sd: StateDict, prefix: str, layout: str, dropped: str) -> StateDict:
    """The `prefix` part of a self-supervised checkpoint, its training heads (`head.*`) dropped."""
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not k.startswith(prefix + "head.")}
    _logger.info("%s checkpoint: %d encoder tensors; dropped the %s (%d tensors)", layout, len(out), dropped,
                 len(sd) - len(out))
    return out


def read_state_dict(path_or_sd, source=None) -> StateDict:
    """Any supported checkpoint (file or dict; `source`: the dict's file, for messages) -> canonical (official
    MAE / timm) names."""
    obj = load_file(path_or_sd) if isinstance(path_or_sd, (str, os.PathLike)) else path_or_sd
    where = path_or_sd if isinstance(path_or_sd, (str, os.PathLike)) else source or "the checkpoint"
    sd = unwrap(obj)
    fmt = detect_format(sd)
    try:  # a layout with a tensor missing or of an odd shape (a truncated or hand-edited file): one line
        if fmt == "hf":
            sd = from_hf(sd)
        elif fmt == "detectron2":
            sd = from_detectron2(sd)
        elif fmt == "mmseg":
            sd = from_mmseg(sd)
        sd = _without_distillation(sd)
        if beit.is_beit(sd):
            sd = beit.canonical(sd)
    except CheckpointError:
        raise
    except (KeyError, IndexError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{where}: a {fmt} checkpoint with a tensor missing or of an odd shape "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); is the file "
                              f"complete?") from None
    bad = [k for k, v in sd.items() if v.is_floating_point()
           and not bool(torch.isfinite(v if v.element_size() > 1 else v.float()).all())]  # fp8: no isfinite kernel
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} tensor(s) hold NaN or Inf, e.g. {bad[0]}: a run that diverged? "
                              f"Use an earlier checkpoint")
    return sd


def _without_distillation(sd: StateDict) -> StateDict:
    """A distilled DeiT: its distillation token, the head reading it, and the token's row of the position
    table ([cls, dist, patches]) dropped -- the rest is a plain ViT encoder."""
    if "dist_token" not in sd:
        return sd
    out = {k: v for k, v in sd.items() if k != "dist_token" and not k.startswith("head_dist.")}
    pe = out.get("pos_embed")
    if pe is not None:
        if pe.dim() != 3 or pe.shape[1] < 3 or int((pe.shape[1] - 2) ** 0.5) ** 2 != pe.shape[1] - 2:
            raise CheckpointError(f"a distilled DeiT whose position table {tuple(pe.shape)} is not [1, 2 + side^2, D]")
        out["pos_embed"] = torch.cat([pe[:, :1], pe[:, 2:]], dim=1)
    _logger.info("distilled DeiT: dropped the distillation token, its head and its position-table row")
    return out


def detect_format(sd: StateDict) -> str:
    keys = list(sd)
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "decoder.decoder_layers.",
                         "decoder.decoder_encoder.")) for k in keys):
        return "hf"
    if any(k.startswith("backbone.net.") for k in keys):
        return "detectron2"
    if any(k.startswith("patch_embed.projection.") for k in keys):
        return "mmseg"
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys):
        return "official"
    raise CheckpointError(
        "unrecognised checkpoint layout (first keys: " + ", ".join(keys[:4]) + "); expected official MAE, "
        "timm / DeiT, MoCo v3, DINO, HF ViTMAE, detectron2 or mmseg names")


# ----------------------------------------------------------------------------------------- loading
def load_into(module: torch.nn.Module, sd: StateDict, source, fresh_ok: str = None, ignore_ok: str = None,
              scope: str = "") -> Dict[str, List[str]]:
    """Load `sd` (already in `module`'s names) into `module`: the one load-and-report path of
    fine-tuning, detectron2 and mmseg. Every tensor of `module` under `scope` must come from `sd`
    unless its name matches `fresh_ok`, shapes must fit, and a tensor of `sd` the module lacks is
    an error unless it matches `ignore_ok` -- each a CheckpointError naming a few keys. Returns
    {'loaded', 'fresh', 'ignored'}: what was loaded, what starts fresh, what was left out."""
    own = module.state_dict()
    fresh_re, ignore_re = re.compile(fresh_ok or "(?!)"), re.compile(ignore_ok or "(?!)")
    missing = [k for k in own if k.startswith(scope) and k not in sd and not fresh_re.search(k)]
    if missing:
        raise CheckpointError(f"{source}: the checkpoint lacks {len(missing)} weights the model needs, e.g. "
                              f"{missing[:3]} (a ViT of another size?)")
    misfit = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
              if k in own and v.shape != own[k].shape]
    if misfit:
        raise CheckpointError(f"{source}: weights do not fit the model: {misfit[:3]}")
    extra = [k for k in sd if k not in own and not ignore_re.search(k)]
    if extra:
        raise CheckpointError(f"{source}: the checkpoint has weights the model lacks (a deeper ViT?): {extra[:3]}")
    loaded = {k: v for k, v in sd.items() if k in own}
    module.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "fresh": sorted(k for k in own if k not in loaded),
            "ignored": sorted(k for k in sd if k not in own)}


# ----------------------------------------------------------------------------------------- writing
def save(path, obj: Dict[str, Any], replace: bool = True) -> Path:
    """Atomically save a checkpoint dict (`.pth`) or a flat state dict (`.safetensors`); with `replace=False`
    only where no file is (`outputs.atomic`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        sd, meta = unwrap(obj), {"format": "pt", "layout": "official-mae"}
        if isinstance(obj.get("model_args"), dict):  # the architecture travels in the header
            meta["model_args"] = json.dumps(obj["model_args"])
        data = save_bytes({k: v.contiguous() for k, v in sd.items()}, metadata=meta)
        return outputs.write_bytes(path, data, replace)  # written here, so a failed write keeps its errno
    return outputs.write_stream(path, lambda f: torch.save(obj, f), replace)  # a file object: the errno is kept


def save_official(path, state_dict: StateDict, **extra) -> Path:
    """The official layout: `{'model': state_dict, ...}` (`.pth`), or safetensors."""
    return save(path, {"model": state_dict, **extra})


# ---------------------------------------------------------------------------------- HF model folders
def hf_model_args(config: dict) -> dict:
    """transformers' ViTMAEConfig -> this toolkit's model_args (MaskedAutoencoderViT keyword arguments)."""
    return {"name": None, "kwargs": {ours: config[hf] for hf, ours in HF_CONFIG.items() if hf in config}}
