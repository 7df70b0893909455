"""A trained ViTDet on images, for notebooks and `mae-transfer predict det`: detectron2's own test-time
resize, model, `Visualizer` and COCO-results conversion.

    p = DetPredictor("configs/det/tiny_cpu.py", "output/demo/det/model_final.pth")
    inst = p([rgb_uint8_array])[0]             # detectron2 Instances (boxes, scores, classes, masks)
    Image.fromarray(p.draw(rgb_uint8_array, inst)).save("overlay.png")
A checkpoint without mask-head weights (trained on a box-only set) is run as Faster R-CNN."""
from typing import List, Optional, Sequence

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import Visualizer

from .. import checkpoints
from ..identify import expect
from .checkpoint import has_mask_head
from .data import boxes_only


class DetPredictor:
    def __init__(self, config: str, weights: str, device: str = "cpu", score_thresh: float = 0.5,
                 class_names: Optional[Sequence[str]] = None):


        cfg = LazyConfig.load(config)
        sd = expect(weights, ("detector",), "predict det")
        if not has_mask_head(sd):
            boxes_only(cfg)
        n = sd["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1  # + background: sized from the weights
        cfg.model.roi_heads.num_classes = n
        cfg.model.roi_heads.box_predictor.test_score_thresh = score_thresh
        self.model = instantiate(cfg.model).eval()
        # every weight of the model from the file, every tensor of the file in the model, shapes equal: a config
        # that does not fit the weights is one error, never a model with random parts
        checkpoints.load_into(self.model, sd, f"{weights} with {config}")
        self.model.to(device)
        self.augment = T.AugmentationList([instantiate(a) for a in cfg.dataloader.test.mapper.augmentations])
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(n)]
        if len(self.class_names) != n:
            raise checkpoints.CheckpointError(
                f"{weights} predicts {n} classes, but {len(self.class_names)} names were given")
        self.device = device

    @torch.no_grad()
    def __call__(self, images: List[np.ndarray]) -> list:
        """RGB uint8 [H, W, 3] arrays (one batch) -> their Instances on the CPU, in image coordinates."""

        inputs = []
        for img in images:
            aug = T.AugInput(img)
            self.augment(aug)
            inputs.append({"image": torch.as_tensor(aug.image.transpose(2, 0, 1).copy()).to(self.device),
                           "height": img.shape[0], "width": img.shape[1]})
        return [out["instances"].to("cpu") for out in self.model(inputs)]

    def draw(self, image: np.ndarray, instances) -> np.ndarray:
        vis = Visualizer(image, Metadata(thing_classes=self.class_names))
        return vis.draw_instance_predictions(instances).get_image()

    @staticmethod
    def to_coco(instances, image_id: int, category_ids: Optional[Sequence[int]] = None) -> list:
        """COCO results entries (bbox xywh, score, RLE segmentation when masks exist)."""

        rows = instances_to_coco_json(instances, image_id)
        for r in rows:
            r["category_id"] = category_ids[r["category_id"]] if category_ids else r["category_id"]
        return rows
