"""ViTDet (Mask R-CNN / Faster R-CNN) as four exported graphs, with detectron2's own inference code
between them -- only what does not export cleanly (anchors, top-k + NMS, box decoding, mask pasting).

    backbone  x: [N, 3, S, S]                  -> p2 ... p6    ViT, window attention, simple feature pyramid
    rpn       p2 ... p6                        -> objectness, anchor deltas per level (the RPN head's convs)
    box_head  p2 ... p5, rois: [R, 5]          -> class logits [R, K + 1], box deltas [R, 4K]
    mask_head p2 ... p5, rois: [R, 5]          -> mask logits [R, K, M, M]   (Mask R-CNN only)

`rois` rows are (image index in the batch, x1, y1, x2, y2), as detectron2's poolers take them. The RoI
graphs hold RoIAlign and the level assignment: every RoI is pooled on every level and keeps its own
level's result (detectron2's `assign_boxes_to_levels`) -- the same numbers as `ROIPooler`, whose per-level
`nonzero` gather has a data-dependent shape that exporters refuse."""
from typing import Dict, Optional

import torch

from .. import checkpoints
from .parts import Part, TupleOut, image_part


class _Levels(torch.nn.Module):
    """detectron2's `ROIPooler` in export-friendly form (one level: that level's RoIAlign)."""

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, feats, rois):  # feats: L x [N, C, Hl, Wl]; rois: [R, 5] -> [R, C, P, P]
        # detectron2: an optional host (`export encoder|seg` need none)
        from detectron2.modeling.poolers import assign_boxes_to_levels
        from detectron2.structures import Boxes

        p = self.pooler
        if len(p.level_poolers) == 1:
            return p.level_poolers[0](feats[0], rois)
        level = assign_boxes_to_levels([Boxes(rois[:, 1:])], p.min_level, p.max_level, p.canonical_box_size,
                                       p.canonical_level)  # [R], 0 .. L-1
        pooled = torch.stack([pool(x, rois) for pool, x in zip(p.level_poolers, feats)])  # [L, R, C, P, P]
        return pooled[level, torch.arange(rois.shape[0], device=rois.device)]


class _BoxHead(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.pool, self.head, self.predictor = _Levels(heads.box_pooler), heads.box_head, heads.box_predictor

    def forward(self, *xs):  # p2 ... p5, rois -> (class logits [R, K + 1], box deltas [R, 4K])
        return tuple(self.predictor(self.head(self.pool(list(xs[:-1]), xs[-1]))))


class _MaskHead(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.pool, self.head = _Levels(heads.mask_pooler), heads.mask_head

    def forward(self, *xs):  # p2 ... p5, rois -> (mask logits [R, K, M, M],)
        return (self.head.layers(self.pool(list(xs[:-1]), xs[-1])),)


class _RPNHead(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, *feats):  # p2 ... p6 -> objectness [N, A, Hl, Wl] per level, then deltas [N, 4A, Hl, Wl]
        logits, deltas = self.head(list(feats))
        return (*logits, *deltas)


def check(model) -> None:
    """One line when the detector is not the R-CNN these graphs cover."""
    # detectron2: an optional host (`export encoder|seg` need none)
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

    heads = model.roi_heads
    if not isinstance(model.proposal_generator, RPN) or not isinstance(heads, StandardROIHeads) \
            or isinstance(heads, CascadeROIHeads) or heads.keypoint_on \
            or (heads.mask_on and heads.mask_pooler is None):
        raise checkpoints.CheckpointError(f"export det covers ViTDet's Mask / Faster R-CNN (an RPN and "
                                          f"StandardROIHeads with poolers), not {type(heads).__name__}")


def backbone(model, size: int):
    """The backbone graph alone (x -> p2 ... p6): `bench/export_speed.py` times it."""

    bb = model.backbone  # this module, not whatever `run_with` puts in its place
    names = list(bb.output_shape())
    return image_part(TupleOut(lambda x: bb(x), names, backbone=bb).eval(), size, names)


def parts(model, size: int) -> dict:
    """The four graphs (three without a mask head) as `parts.Part`s, with example inputs for tracing."""
    # detectron2: an optional host (`export encoder|seg` need none)
    from detectron2.modeling.poolers import convert_boxes_to_pooler_format
    from detectron2.structures import Boxes


    check(model)
    bb, rpn, heads = model.backbone, model.proposal_generator, model.roi_heads
    batch, rois = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("rois", min=1, max=100_000)
    out = {"backbone": backbone(model, size)}
    g = torch.Generator().manual_seed(0)  # features of the backbone's shapes (tracing needs shapes, not values)
    feats = {f: torch.randn(2, s.channels, size // s.stride, size // s.stride, generator=g)
             for f, s in bb.output_shape().items()}
    xy, wh = torch.rand(8, 2, generator=g) * size * 0.6, torch.rand(8, 2, generator=g) ** 2 * size * 0.4 + 2
    boxes = Boxes(torch.cat([xy, xy + wh], 1))  # small to large: every pyramid level is used
    example = convert_boxes_to_pooler_format([boxes[:4], boxes[4:]])
    ins = list(rpn.in_features)
    out["rpn"] = Part(_RPNHead(rpn.rpn_head).eval(), tuple(feats[f] for f in ins), [{0: batch}] * len(ins), ins,
                      [f"objectness_{f}" for f in ins] + [f"anchor_deltas_{f}" for f in ins],
                      ["rpn objectness"] * len(ins) + ["rpn anchor deltas"] * len(ins))
    roi_heads = [("box_head", _BoxHead, heads.box_in_features, ["class_logits", "box_deltas"],
                  ["box head logits", "box head deltas"])]
    if heads.mask_on:
        roi_heads.append(("mask_head", _MaskHead, heads.mask_in_features, ["mask_logits"], ["mask head logits"]))
    for name, cls, ins, outs, rows in roi_heads:
        out[name] = Part(cls(heads).eval(), (*(feats[f] for f in ins), example),
                         [{0: batch}] * len(ins) + [{0: rois}], [*ins, "rois"], outs, rows)
    return out


class _Backbone(torch.nn.Module):
    """Stands in for detectron2's backbone: the same padding facts, features from the graph."""

    def __init__(self, host, graph):
        super().__init__()
        self.host, self.graph, self.names = host, graph, list(host.output_shape())
        self.size_divisibility, self.padding_constraints = host.size_divisibility, host.padding_constraints

    def output_shape(self):
        return self.host.output_shape()

    def forward(self, x):
        return dict(zip(self.names, self.graph(x)))


class _RPNGraph(torch.nn.Module):
    """Stands in for the RPN head: (objectness list, deltas list) from the graph."""

    def __init__(self, host, graph):
        super().__init__()
        self.host, self.graph = host, graph

    def forward(self, feats):
        out = self.graph(*feats)
        return out[:len(feats)], out[len(feats):]


def _on_rois(graph, feats, boxes):
    """The graph on the boxes of every image; no boxes at all: one placeholder RoI, outputs cut to 0 rows
    (the graphs take at least one RoI)."""
    # detectron2: an optional host (`export encoder|seg` need none)
    from detectron2.modeling.poolers import convert_boxes_to_pooler_format

    rois = convert_boxes_to_pooler_format(boxes)
    if len(rois):
        return graph(*feats, rois)
    return [o[:0] for o in graph(*feats, rois.new_tensor([[0, 0, 0, 1, 1]]))]


def run_with(model, graphs: Optional[Dict[str, object]]) -> None:
    """Make detectron2's GeneralizedRCNN compute its four networks with `graphs` (exported files'
    runtimes or the eager parts); None: its own modules again. Everything between them -- anchors,
    proposal top-k and NMS, box decoding, score threshold and NMS, mask pasting -- stays detectron2's."""
    # detectron2: an optional host (`export encoder|seg` need none)
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference

    rpn, heads = model.proposal_generator, model.roi_heads
    if isinstance(model.backbone, _Backbone):
        model.backbone, rpn.rpn_head = model.backbone.host, rpn.rpn_head.host
    for name in ("_forward_box", "_forward_mask"):
        heads.__dict__.pop(name, None)
    if graphs is None:
        return
    model.backbone, rpn.rpn_head = _Backbone(model.backbone, graphs["backbone"]), _RPNGraph(rpn.rpn_head,
                                                                                             graphs["rpn"])

    def forward_box(features, proposals):  # StandardROIHeads._forward_box at inference
        feats = [features[f] for f in heads.box_in_features]
        predictions = _on_rois(graphs["box_head"], feats, [p.proposal_boxes for p in proposals])
        return heads.box_predictor.inference(tuple(predictions), proposals)[0]

    def forward_mask(features, instances):  # StandardROIHeads._forward_mask + mask_head at inference
        if heads.mask_on:
            feats = [features[f] for f in heads.mask_in_features]
            mask_rcnn_inference(_on_rois(graphs["mask_head"], feats, [i.pred_boxes for i in instances])[0],
                                instances)
        return instances
    heads._forward_box, heads._forward_mask = forward_box, forward_mask
