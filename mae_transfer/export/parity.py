"""The parity gate: an exported file is kept only if it computes what PyTorch computes, on real images.

Checked per runtime against eager PyTorch on the same inputs:
* every graph output (features, tokens, logits; det: also the RPN and RoI heads' outputs, on the inputs
  eager PyTorch gave them): max |difference| relative to max |PyTorch output|;
* det, end to end (the runtime's four graphs, detectron2's NMS and pasting between): every detection
  matched by one of the same class with box IoU >= 0.99, the score difference, the mask IoU of matched
  pairs -- a detection may go unmatched only when its score lies within SCORE_TOL of where the other side
  cut: the score threshold, or, when the other side kept its full top-k, its lowest kept score;
* seg, end to end: the share of pixels given the same class."""
from typing import Dict, List, Optional

import numpy as np
import torch
from torchvision.ops import box_iou

from ..errors import RunFailed

REL_TOL = 1e-3       # graph outputs: max|ort - torch| <= REL_TOL * max|torch|
BOX_IOU = 0.99       # a detection is the same detection
SCORE_TOL = 1e-2     # |score difference| of matched detections
MASK_IOU = 0.99      # matched detections' masks
PIXELS = 0.999       # seg: share of pixels with the same class


class ParityError(RunFailed):
    """The exported file does not compute what PyTorch computes (the report says where)."""

def graph_rows(ref: List[List[torch.Tensor]], got: List[List[torch.Tensor]], rows) -> Dict[str, float]:
    """ref/got: per call, a graph's outputs; rows: each output's row -> {row: max |difference| relative to
    max |PyTorch output|, over the calls and the outputs of that row}."""
    diff: Dict[str, float] = {}
    scale: Dict[str, float] = {}
    for i, row in enumerate(rows):
        for r, g in zip(ref, got):
            diff[row] = max(diff.get(row, 0.0), float((g[i].float() - r[i].float()).abs().max()))
            scale[row] = max(scale.get(row, 0.0), float(r[i].float().abs().max()))
    return {row: diff[row] / (scale[row] or 1.0) for row in diff}


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return box_iou(a, b) if len(a) and len(b) else torch.zeros(len(a), len(b))


def _cut(inst, thresh: float, topk: int) -> float:
    """The score below which `inst` dropped detections: the threshold, or its top-k's lowest when it is full."""
    return max(thresh, float(inst.scores.min())) if topk > 0 and len(inst) >= topk else thresh


def det_rows(ref: list, got: list, thresh: float, topk: int) -> Dict[str, float]:
    """Instances per image (eager vs runtime) -> matched share, worst score difference, worst mask IoU.
    thresh, topk: the box predictor's test score threshold and detections per image."""
    total = matched = 0
    score_diff, mask_iou, unmatched_far = 0.0, 1.0, 0
    for r, g in zip(ref, got):
        cut_r, cut_g = _cut(r, thresh, topk), _cut(g, thresh, topk)
        iou = _iou(r.pred_boxes.tensor, g.pred_boxes.tensor)
        same = iou * (r.pred_classes[:, None] == g.pred_classes[None, :])
        used = set()
        for i in range(len(r)):
            total += 1
            j = int(same[i].argmax()) if same.shape[1] else -1
            if j >= 0 and float(same[i, j]) >= BOX_IOU and j not in used:
                used.add(j)
                matched += 1
                score_diff = max(score_diff, abs(float(r.scores[i]) - float(g.scores[j])))
                if r.has("pred_masks"):
                    a, b = r.pred_masks[i].bool(), g.pred_masks[j].bool()
                    union = int((a | b).sum())
                    mask_iou = min(mask_iou, int((a & b).sum()) / union if union else 1.0)
            elif float(r.scores[i]) - cut_g > SCORE_TOL:
                unmatched_far += 1
        unmatched_far += sum(1 for j in range(len(g)) if j not in used and float(g.scores[j]) - cut_r > SCORE_TOL)
    rows = {"detections": float(total), "matched share": matched / total if total else 1.0,
            "unmatched clear of the threshold": float(unmatched_far), "max score difference": score_diff}
    if ref and ref[0].has("pred_masks"):
        rows["min mask IoU"] = mask_iou
    return rows


def seg_rows(ref: List[np.ndarray], got: List[np.ndarray]) -> Dict[str, float]:
    same = sum(int((r == g).sum()) for r, g in zip(ref, got))
    return {"same-class pixels": same / max(1, sum(r.size for r in ref))}


def verdict(rows: Dict[str, float], names) -> List[str]:
    """What fails its tolerance ([] when parity holds)."""
    bad = [f"{n}: {rows[n]:.2e} > {REL_TOL:g} (relative)" for n in names if not rows[n] <= REL_TOL]
    checks = [("matched share", lambda v: v == 1.0, "== 1"),
              ("unmatched clear of the threshold", lambda v: v == 0, "== 0"),
              ("max score difference", lambda v: v <= SCORE_TOL, f"<= {SCORE_TOL:g}"),
              ("min mask IoU", lambda v: v >= MASK_IOU, f">= {MASK_IOU:g}"),
              ("same-class pixels", lambda v: v >= PIXELS, f">= {PIXELS:g}")]
    return bad + [f"{k}: {rows[k]:.4g}, must be {want}" for k, ok, want in checks if k in rows and not ok(rows[k])]


def table(report: Dict[str, dict]) -> str:
    """report: runtime -> {"rows": {...}, "failed": [...]} -> a plain-text table."""
    keys = list(dict.fromkeys(k for r in report.values() for k in r["rows"]))
    width = max(len(k) for k in keys + ["check"])
    cols = list(report)
    lines = [f"{'check':<{width}}  " + "  ".join(f"{c:>14}" for c in cols)]
    for k in keys:
        cells = []
        for c in cols:
            v: Optional[float] = report[c]["rows"].get(k)
            cells.append(f"{'-' if v is None else (f'{v:.3g}' if abs(v) >= 1e-3 or v == 0 else f'{v:.2e}'):>14}")
        lines.append(f"{k:<{width}}  " + "  ".join(cells))
    lines.append(f"{'parity':<{width}}  " + "  ".join(f"{'FAILS' if report[c]['failed'] else 'holds':>14}"
                                                     for c in cols))
    return "\n".join(lines)
