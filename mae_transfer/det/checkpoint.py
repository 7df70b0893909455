"""MAE checkpoint -> detectron2 ViTDet model, with a report of what was loaded and what starts fresh."""
import logging
import re
from pathlib import Path
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .. import checkpoints, hosts, outputs

_logger = logging.getLogger("mae_transfer")
# Parameters of the trunk that may legitimately start fresh: ViTDet adds relative position tables.
FRESH_OK = re.compile(r"blocks\.\d+\.attn\.rel_pos_[hw]$")


def load_backbone(model: torch.nn.Module, path, prefix: str = hosts.D2_PREFIX) -> Dict[str, List[str]]:
    """Load any MAE checkpoint (official full / encoder-only, mae-transfer pretrain, timm, HF,
    safetensors) into `model`'s ViT. Raises CheckpointError if a trunk weight is missing or does not
    fit; returns {'loaded': [...], 'fresh': [...], 'ignored': [...]}."""
    net = next(m for n, m in model.named_modules() if n == prefix.rstrip("."))
    table = getattr(net, "pos_embed", None)  # [1, 1 + side^2, D]: d2's ViT keeps the pretraining grid, cls row
    side = int(round((table.shape[1] - 1) ** 0.5)) if table is not None else None
    sd, notes = hosts.adapt(checkpoints.read_state_dict(path), "detectron2", prefix=prefix,
                            patch_size=net.patch_embed.proj.kernel_size[0], grid=(side, side) if side else None)
    report = checkpoints.load_into(model, sd, path, fresh_ok=FRESH_OK.pattern, scope=prefix)
    _logger.info("backbone %s: loaded %d tensors into %s*; fresh: %d rel-pos tables, %s", path,
                 len(report["loaded"]), prefix, sum(bool(FRESH_OK.search(k)) for k in report["fresh"]),
                 _summarise([k for k in report["fresh"] if not FRESH_OK.search(k)]))
    if notes:
        _logger.info("backbone %s is a BEiT: %s", path, "; ".join(notes))
    report["notes"] = notes
    return report


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's own DetectionCheckpointer whose file reading goes through the toolkit's safe reader
    (no unpickling of code, one-line errors), for --resume, --eval-only and prediction alike, and whose writes go
    through the output policy: beside the name and renamed (fvcore writes in place, through a hard link of a
    `cp -al` snapshot and half-written on a crash), a failed write one line by errno."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                **kwargs}
        self.logger.info("Saving checkpoint to %s", Path(self.save_dir) / f"{name}.pth")
        checkpoints.save(Path(self.save_dir) / f"{name}.pth", data)
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        outputs.write_text(Path(self.save_dir) / "last_checkpoint", last_filename_basename)

    def _load_file(self, filename):
        obj = checkpoints.load_file(filename)
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            return obj
        return {"model": checkpoints.unwrap(obj)}


def has_mask_head(path_or_sd) -> bool:
    """Whether a trained detector checkpoint (a path, or its state dict) has mask-head weights (else it was
    trained box-only)."""
    sd = checkpoints.unwrap(checkpoints.load_file(path_or_sd)) if isinstance(path_or_sd, (str, Path)) else path_or_sd
    return any(k.startswith("roi_heads.mask_head.") for k in sd)


def _summarise(keys: List[str]) -> str:
    """'backbone.simfp_2 (12), proposal_generator (6), ...': modules that start fresh."""
    counts: Dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:2]) if parts[0] in ("backbone", "roi_heads") else parts[0]
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in counts.items())


def max_pool_top_block(in_feature: str = "p5"):
    """detectron2's LastLevelMaxPool reading another level (it hard-codes p5): with 8-px patches
    the pyramid ends at p4, which is pooled into p5."""

    block = LastLevelMaxPool()
    block.in_feature = in_feature
    return block
