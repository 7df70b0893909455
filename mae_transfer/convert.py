"""Write any MAE checkpoint in the form another codebase loads directly (`mae-transfer convert`):

    hf           a directory for `ViTMAEForPreTraining.from_pretrained(dir)` (or `ViTMAEModel`):
                 config.json + model.safetensors, transformers 5.x names
    timm         the encoder, for `timm.create_model(name, pretrained=True,
                 pretrained_cfg_overlay=dict(file=...))` with this toolkit's `vit_*` names
    detectron2   `{'model': ...}` with `backbone.net.*` names for `DetectionCheckpointer(model).load()`
    mmseg        `{'state_dict': ...}` with mmseg `MAE` names for `init_cfg=dict(type='Pretrained', ...)`
    safetensors  the official names, flat
    official     `{'model': ...}`, the official MAE layout
Each returns a report of what was written, dropped and renamed."""
from pathlib import Path
from typing import Dict, List, Optional

from . import checkpoints, hosts, outputs
from .errors import CheckpointError
from .layouts import DECODER, HF_CONFIG
from .models.mae import architecture, training_args

TARGETS = ("hf", "timm", "detectron2", "mmseg", "safetensors", "official")


def _report(src: Dict, out: Dict, path: Path, renamed: Optional[List[str]] = None, notes=()) -> Dict:
    return {"written": str(path), "tensors": len(out), "dropped": sorted(set(src) - set(out) - set(renamed or ())),
            "renamed": renamed or [], **({"adapted": list(notes)} if notes else {})}


def hf_config(obj, sd) -> dict:
    """transformers' ViTMAEConfig for checkpoint `obj` (state dict `sd` in official names): sizes from the
    architecture it records (or the table of known sizes), mask ratio and norm_pix_loss from its args."""
    kw, args = {"img_size": 224, "in_chans": 3, "norm_pix_loss": False, **architecture(obj, sd)}, training_args(obj)
    arch = "ViTMAEForPreTraining" if "decoder_embed_dim" in kw else "ViTMAEModel"
    cfg = {"model_type": "vit_mae", "architectures": [arch], **{hf: kw[ours] for hf, ours in HF_CONFIG.items()
                                                                  if ours in kw},
           "intermediate_size": int(kw.get("mlp_ratio", 4) * kw["embed_dim"]), "hidden_act": "gelu",
           "layer_norm_eps": 1e-6, "qkv_bias": True,
           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
           "mask_ratio": args.get("mask_ratio", 0.75)}
    if "decoder_embed_dim" in kw:
        cfg["decoder_intermediate_size"] = int(kw.get("decoder_mlp_ratio", 4) * kw["decoder_embed_dim"])
    return cfg


def convert_checkpoint(src_path, target: str, out, det_patch_size: Optional[int] = None,
                       det_pretrain_img_size: int = 224) -> Dict:
    """Convert the checkpoint at `src_path` (any format `read_state_dict` takes) to `target` at `out`."""
    if target not in TARGETS:
        raise CheckpointError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    out = Path(out)
    if target == "safetensors" and out.suffix != ".safetensors":
        raise CheckpointError(f"--to safetensors writes a .safetensors file, not {out.name}")
    outputs.refuse_inputs([out], [src_path])  # e.g. `convert X.pth --to timm X.pth` would replace X with its encoder
    outputs.check_new(out, f"--to {target} output")  # early; the write itself publishes only where nothing is
    obj = checkpoints.load_file(src_path)
    sd = checkpoints.read_state_dict(obj, src_path)
    arch = {"model_args": obj["model_args"]} if isinstance(obj, dict) and obj.get("model_args") else {}
    if target in ("safetensors", "official"):
        # .pth: the official {'model': ...}; .safetensors: flat, the architecture in its header
        checkpoints.save(out, {"model": sd, **arch}, replace=False)
        return _report(sd, sd, out)
    if target == "hf":
        try:
            hf, _ = hosts.adapt(sd, "hf")
            config = hf_config(obj, sd)
        except (CheckpointError, ValueError) as e:  # a BEiT; a size that cannot be told
            raise CheckpointError(f"{src_path}: {e}") from None
        with outputs.atomic_folder(out) as tmp:  # filled beside, then renamed onto `out` if nothing is there
            outputs.write_json(tmp / "config.json", config, indent=2)
            checkpoints.save(tmp / "model.safetensors", {"model": hf})
        return _report(sd, hf, out, renamed=list(sd))
    if target == "timm":
        enc, notes = hosts.adapt(sd, "timm")
        checkpoints.save(out, enc, replace=False)  # a flat state dict (.pth or .safetensors)
        return _report(sd, enc, out, notes=notes)
    if target == "detectron2":
        patch = det_patch_size or sd["patch_embed.proj.weight"].shape[-1]
        side = det_pretrain_img_size // patch  # d2's ViT holds a table for pretrain_img_size / patch
        if side < 1:
            raise CheckpointError(f"--det-pretrain-img-size {det_pretrain_img_size} is smaller than one {patch}-px "
                                  f"patch")
        d2, notes = hosts.adapt(sd, "detectron2", patch_size=patch, grid=(side, side))
        old = sd["pos_embed"].shape[1] - 1 if "pos_embed" in sd else side * side
        if old != side * side:
            notes = [*notes, f"position table resampled from {int(old ** 0.5)}x{int(old ** 0.5)} to {side}x{side} "
                             f"(--det-pretrain-img-size {det_pretrain_img_size})"]
        checkpoints.save(out, {"model": d2, "__author__": "mae_transfer", "matching_heuristics": False, **arch},
                         replace=False)
        return _report(sd, d2, out, renamed=[k for k in sd if hosts.D2_PREFIX + k in d2], notes=notes)
    mm, notes = hosts.adapt(sd, "mmseg")
    checkpoints.save(out, {"state_dict": mm, "meta": {"source": str(src_path)}, **arch}, replace=False)
    return _report(sd, mm, out, renamed=[k for k in sd if k not in mm and not k.startswith(DECODER + ("norm.",))],
                   notes=notes)
