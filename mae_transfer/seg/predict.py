"""A trained UperNet on images, for notebooks and `mae-transfer predict seg`: mmseg's own
`init_model` / `inference_model` and `SegLocalVisualizer`.

    p = SegPredictor("configs/seg/tiny_cpu.py", "output/demo/seg/iter_150.pth")
    result = p(["a.jpg"])[0]                  # SegDataSample; result.pred_sem_seg.data[0] = class map
    p.draw("a.jpg", result, "overlay.png")"""
import warnings
from typing import List

import numpy as np
import torch
from mmengine.config import Config
from mmengine.visualization import Visualizer
from mmseg.apis import inference_model, init_model
from mmseg.visualization import SegLocalVisualizer

from .. import checkpoints
from ..data.images import load_rgb
from ..identify import expect
from .data import plain_bn


class SegPredictor:
    def __init__(self, config: str, weights: str, device: str = "cpu"):
        obj, sd = expect(weights, ("segmentor",), "predict seg", whole=True)  # read once, safely; one line if bad
        meta = obj.get("meta") or {}
        cfg = Config.fromfile(config)
        if not str(device).startswith("cuda"):
            plain_bn(cfg.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mmseg's deprecation notices while it builds the model
            self.model = init_model(cfg, None, device="cpu")  # built only: mmengine's loader would start a head
        # that does not fit the weights from random values with a warning; ours is strict and says so in one line
        checkpoints.load_into(self.model, sd, f"{weights} with {config}")
        self.model.to(device)
        n = self.model.decode_head.num_classes
        self.model.dataset_meta = meta.get("dataset_meta") or {"classes": [f"class {i}" for i in range(n)],
                                                               "palette": [[(37 * i) % 256, (91 * i) % 256,
                                                                            (157 * i) % 256] for i in range(n)]}
        self.classes = list(self.model.dataset_meta["classes"])

    @torch.no_grad()
    def __call__(self, images: List) -> list:
        """Image paths or BGR arrays (one batch) -> SegDataSamples, predictions at image size."""
        out = inference_model(self.model, list(images))
        return out if isinstance(out, list) else [out]

    @staticmethod
    def class_map(result) -> np.ndarray:
        return result.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)

    def draw(self, image, result, out_file: str, opacity: float = 0.5) -> None:
        name = "mae_transfer.predict"
        vis = (SegLocalVisualizer.get_instance(name) if Visualizer.check_instance_created(name)
               else SegLocalVisualizer(name=name, alpha=opacity))
        vis.dataset_meta = self.model.dataset_meta
        img = image if isinstance(image, np.ndarray) else np.asarray(load_rgb(image))
        vis.add_datasample("prediction", img, result, draw_gt=False, show=False, out_file=out_file, with_labels=True)
