"""What is exported for each kind, and how a predictor runs exported graphs in place of its networks.

* `encoder`: the ViT of any checkpoint the toolkit reads, `x: [N, 3, S, S]` (normalised) -> tokens
  `[N, 1 + L, D]` (timm's `forward_features`). One graph, `model`.
* `det`: ViTDet as four graphs -- backbone (the ViT with window attention, decomposed relative positions
  and the simple feature pyramid: what breaks exporters and nearly all of the FLOPs), the RPN head, the
  box head and the mask head (RoIAlign in the graph) -- with detectron2's anchors, NMS, box decoding and
  mask pasting between them (`det.py`).
* `seg`: the whole UperNet (`EncoderDecoder.encode_decode`) on one `S x S` window: `x: [N, 3, S, S]`
  -> logits `[N, C, S, S]`. mmseg's own test pipeline and sliding window run around it. One graph, `model`.

Batch dimensions (and the RoI count) are dynamic; the spatial size is the model's fixed square (1024 for
ViTDet's LSJ, 512 for UperNet, the encoder's img_size)."""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms

from .. import checkpoints
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..models.mae import architecture, read_with
from ..models.vit import load_checkpoint
from . import det as d2
from .parts import Exportable, Graph, Part, TupleOut, image_part

KINDS = ("encoder", "det", "seg")


def encoder(weights: str, img_size: Optional[int] = None) -> Exportable:
    sd, kw = read_with(weights, architecture)
    size = img_size or kw["img_size"]
    pool = "avg" if "fc_norm.weight" in sd else "token"  # fine-tuned with global pooling: fc_norm, no norm
    vit = VisionTransformer(img_size=size, patch_size=kw["patch_size"], in_chans=kw.get("in_chans", 3),
                            embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"],
                            num_classes=0, global_pool=pool, fc_norm=pool == "avg", dynamic_img_size=False)
    load_checkpoint(vit, sd)
    module = TupleOut(lambda x: vit.forward_features(x), ["tokens"], vit=vit).eval()
    return Exportable("encoder", {"model": image_part(module, size, ["tokens"])}, size,
                      meta={"patch_size": kw["patch_size"]})


def det_size(model) -> int:
    """A detectron2 GeneralizedRCNN -> the fixed square its backbone pads to (the graphs' input size)."""
    size = (getattr(model.backbone, "padding_constraints", None) or {}).get("square_size") or 0
    if not size:
        raise checkpoints.CheckpointError("the backbone pads to no fixed square (square_pad): an exported graph "
                                          "needs one input size")
    return size


def seg_module(model):
    """An mmseg EncoderDecoder -> (encode_decode on one S x S window as x -> (logits,), S)."""
    mode = model.test_cfg.get("mode", "whole")
    size = model.test_cfg.get("crop_size") if mode == "slide" else None
    if not size or size[0] != size[1]:
        raise checkpoints.CheckpointError(f"test_cfg mode={mode!r}, crop_size={size}: the exported UperNet runs "
                                          f"square windows (mode='slide' with a square crop_size)")
    s = int(size[0])
    metas = [dict(img_shape=(s, s), pad_shape=(s, s))]  # decode_head resizes to metas[0]['img_shape']
    network = model.encode_decode  # the bound method: `run_with` replaces the attribute, not this
    return TupleOut(lambda x: network(x, metas), ["logits"], model=model).eval(), s


def det(config: str, weights: str, score_thresh: float = 0.05, class_names=None, device="cpu") -> Exportable:
    from ..det.predict import DetPredictor  # detectron2: an optional host (`export encoder` needs none)

    pred = DetPredictor(config, weights, device, score_thresh, class_names)  # 0.05: detectron2's test threshold
    size = det_size(pred.model)
    return Exportable("det", d2.parts(pred.model, size), size, pred,
                      {"classes": pred.class_names, "mask_head": pred.model.roi_heads.mask_on})


def seg(config: str, weights: str, device="cpu") -> Exportable:
    from ..seg.predict import SegPredictor  # mmseg: an optional host

    pred = SegPredictor(config, weights, device)
    module, size = seg_module(pred.model)
    return Exportable("seg", {"model": image_part(module, size, ["logits"])}, size, pred, {"classes": pred.classes})


def build(kind: str, config: Optional[str], weights: str, img_size: Optional[int] = None) -> Exportable:
    return encoder(weights, img_size) if kind == "encoder" else (det if kind == "det" else seg)(config, weights)


def run_with(predictor, kind: str, graphs: Optional[Dict[str, Graph]]) -> None:
    """Make a DetPredictor / SegPredictor compute its networks with `graphs` (part -> an exported file's
    runtime, or the eager part); None: the host's own modules again. Everything around them -- resizing,
    padding, sliding window, NMS, drawing -- stays the host's own code, the same for every runtime."""
    if kind == "det":
        return d2.run_with(predictor.model, graphs)
    predictor.model.__dict__.pop("encode_decode", None)
    if graphs is None:
        return
    s, graph = tuple(predictor.model.test_cfg.get("crop_size") or ()), graphs["model"]

    def encode_decode(inputs, metas):
        if tuple(inputs.shape[2:]) != s:
            raise ValueError(f"the exported UperNet takes {s} windows, got {tuple(inputs.shape[2:])}")
        return graph(inputs)[0]
    predictor.model.encode_decode = encode_decode


def eager(part: Part) -> Graph:
    def run(*xs):
        with torch.no_grad():
            return list(part.module(*xs))
    return run


def encoder_inputs(images: Sequence, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic), centre crop, ImageNet normalisation: [N, 3, S, S]."""

    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([tf(im) for im in images])


def as_arrays(images: Sequence) -> List[np.ndarray]:
    return [np.asarray(im.convert("RGB")) for im in images]
