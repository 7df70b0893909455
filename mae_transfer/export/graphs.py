"""What is exported for each kind, and how a predictor runs an exported graph in place of its network.

* `encoder`: the ViT of any checkpoint the toolkit reads, `x: [N, 3, S, S]` (normalised) -> tokens
  `[N, 1 + L, D]` (timm's `forward_features`).
* `det`: ViTDet's backbone -- the ViT with its window attention, decomposed relative positions and the
  simple feature pyramid, i.e. what breaks exporters and nearly all of the FLOPs -- `x: [N, 3, S, S]`
  (detectron2's normalised, square-padded batch) -> `p2 ... p6`. The RPN, the RoI heads (RoIAlign,
  NMS) and mask pasting stay detectron2's own code around the graph, the same for every runtime.
* `seg`: the whole UperNet (`EncoderDecoder.encode_decode`) on one `S x S` window: `x: [N, 3, S, S]`
  -> logits `[N, C, S, S]`. mmseg's own test pipeline and sliding window run around it.

The batch dimension is dynamic; the spatial size is the model's fixed square (1024 for ViTDet's LSJ,
512 for UperNet, the encoder's img_size)."""
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .. import checkpoints

KINDS = ("encoder", "det", "seg")
Graph = Callable[[torch.Tensor], List[torch.Tensor]]  # every runtime: x -> its outputs, in `names` order


@dataclass
class Exportable:
    kind: str
    module: torch.nn.Module  # eager PyTorch, x -> tuple of outputs
    size: int
    names: List[str]
    predictor: object = None  # DetPredictor / SegPredictor (det, seg)
    meta: dict = field(default_factory=dict)  # what `predict --runtime` needs besides the graph


class _Tuple(torch.nn.Module):
    """A module whose forward returns its outputs as a tuple (exporters want a flat output)."""

    def __init__(self, fn: Callable, names: Sequence[str], **modules):
        super().__init__()
        self.fn, self.names = fn, list(names)
        for k, m in modules.items():
            self.add_module(k, m)

    def forward(self, x):
        out = self.fn(x)
        return tuple(out[k] for k in self.names) if isinstance(out, dict) else (out,)


def encoder(weights: str, img_size: Optional[int] = None) -> Exportable:
    from timm.models.vision_transformer import VisionTransformer

    from ..models.mae import architecture, read_with
    from ..models.vit import load_checkpoint

    sd, kw = read_with(weights, architecture)
    size = img_size or kw["img_size"]
    pool = "avg" if "fc_norm.weight" in sd else "token"  # fine-tuned with global pooling: fc_norm, no norm
    vit = VisionTransformer(img_size=size, patch_size=kw["patch_size"], in_chans=kw.get("in_chans", 3),
                            embed_dim=kw["embed_dim"], depth=kw["depth"], num_heads=kw["num_heads"],
                            num_classes=0, global_pool=pool, fc_norm=pool == "avg", dynamic_img_size=False)
    load_checkpoint(vit, sd)
    module = _Tuple(lambda x: vit.forward_features(x), ["tokens"], vit=vit).eval()
    return Exportable("encoder", module, size, ["tokens"], meta={"patch_size": kw["patch_size"]})


def det_module(model):
    """A detectron2 GeneralizedRCNN -> (its backbone as x -> (p2, ...), the square size, output names)."""
    bb = model.backbone
    size = (getattr(bb, "padding_constraints", None) or {}).get("square_size") or 0
    if not size:
        raise checkpoints.CheckpointError("the backbone pads to no fixed square (square_pad): an exported graph "
                                          "needs one input size")
    names = list(bb.output_shape())
    return _Tuple(lambda x: bb(x), names, backbone=bb).eval(), size, names


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
    return _Tuple(lambda x: network(x, metas), ["logits"], model=model).eval(), s


def det(config: str, weights: str, score_thresh: float = 0.05, class_names=None, device="cpu") -> Exportable:
    from ..det.predict import DetPredictor

    pred = DetPredictor(config, weights, device, score_thresh, class_names)  # 0.05: detectron2's test threshold
    module, size, names = det_module(pred.model)
    return Exportable("det", module, size, names, pred,
                      {"classes": pred.class_names, "mask_head": pred.model.roi_heads.mask_on})


def seg(config: str, weights: str, device="cpu") -> Exportable:
    from ..seg.predict import SegPredictor

    pred = SegPredictor(config, weights, device)
    module, size = seg_module(pred.model)
    return Exportable("seg", module, size, ["logits"], pred, {"classes": pred.classes})


def build(kind: str, config: Optional[str], weights: str, img_size: Optional[int] = None) -> Exportable:
    return encoder(weights, img_size) if kind == "encoder" else (det if kind == "det" else seg)(config, weights)


class _GraphBackbone(torch.nn.Module):
    """Stands in for detectron2's backbone: the same padding facts, features from `graph`."""

    def __init__(self, backbone, graph: Graph, names: Sequence[str]):
        super().__init__()
        self.size_divisibility, self.padding_constraints = backbone.size_divisibility, backbone.padding_constraints
        self._shapes, self.graph, self.names = backbone.output_shape(), graph, list(names)

    def output_shape(self):
        return self._shapes

    def forward(self, x):
        return dict(zip(self.names, self.graph(x)))


def run_with(predictor, kind: str, graph: Graph) -> None:
    """Make a DetPredictor / SegPredictor compute its network with `graph` (an exported file's runtime,
    or the eager module): everything around it -- resizing, padding, sliding window, heads, drawing --
    stays the host's own code, the same for every runtime."""
    if kind == "det":
        orig = getattr(predictor, "_eager_backbone", None) or predictor.model.backbone
        predictor._eager_backbone = orig
        predictor.model.backbone = _GraphBackbone(orig, graph, list(orig.output_shape()))
        return
    s = tuple(predictor.model.test_cfg.get("crop_size") or ())

    def encode_decode(inputs, metas):
        if tuple(inputs.shape[2:]) != s:
            raise ValueError(f"the exported UperNet takes {s} windows, got {tuple(inputs.shape[2:])}")
        return graph(inputs)[0]
    predictor.model.encode_decode = encode_decode


def eager(ex: Exportable) -> Graph:
    def run(x):
        with torch.no_grad():
            return list(ex.module(x))
    return run


def encoder_inputs(images: Sequence, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic), centre crop, ImageNet normalisation: [N, 3, S, S]."""
    from torchvision import transforms

    from ..data import IMAGENET_MEAN, IMAGENET_STD

    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([tf(im) for im in images])


def as_arrays(images: Sequence) -> List[np.ndarray]:
    return [np.asarray(im.convert("RGB")) for im in images]
