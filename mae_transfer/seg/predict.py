"""A trained UperNet on images, for notebooks and `mae-transfer predict seg`: mmseg's own
`init_model` / `inference_model` and `SegLocalVisualizer`.

    p = SegPredictor("configs/seg/tiny_cpu.py", "output/demo/seg/iter_150.pth")
    result = p(["a.jpg"])[0]                  # SegDataSample; result.pred_sem_seg.data[0] = class map
    p.draw("a.jpg", result, "overlay.png")"""
from typing import List

import numpy as np
import torch

from .. import checkpoints
from ..data.images import load_rgb
from ..identify import expect


class SegPredictor:
    def __init__(self, config: str, weights: str, device: str = "cpu"):
        import mae_transfer.seg  # noqa: F401  (mmcv-lite compat, MAEViT)

        # isort: split
        from mmengine.config import Config
        from mmseg.apis import init_model

        from .compat import mmengine_checkpoints
        from .data import plain_bn

        sd = expect(weights, ("segmentor",), "predict seg")  # the safe reader first: a bad file is one line
        cfg = Config.fromfile(config)
        if not str(device).startswith("cuda"):
            plain_bn(cfg.model)
        with mmengine_checkpoints():  # the runner's checkpoint holds mmengine's message-hub types
            self.model = init_model(cfg, weights, device=device)
        # mmengine loads leniently (a head of another size starts random, with a warning): held to the weights
        checkpoints.load_into(self.model, {k: v.to(device) for k, v in sd.items()}, f"{weights} with {config}")
        self.classes = list(self.model.dataset_meta["classes"])

    @torch.no_grad()
    def __call__(self, images: List) -> list:
        """Image paths or BGR arrays (one batch) -> SegDataSamples, predictions at image size."""
        from mmseg.apis import inference_model

        out = inference_model(self.model, list(images))
        return out if isinstance(out, list) else [out]

    @staticmethod
    def class_map(result) -> np.ndarray:
        return result.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)

    def draw(self, image, result, out_file: str, opacity: float = 0.5) -> None:
        from mmengine.visualization import Visualizer
        from mmseg.visualization import SegLocalVisualizer

        name = "mae_transfer.predict"
        vis = (SegLocalVisualizer.get_instance(name) if Visualizer.check_instance_created(name)
               else SegLocalVisualizer(name=name, alpha=opacity))
        vis.dataset_meta = self.model.dataset_meta
        img = image if isinstance(image, np.ndarray) else np.asarray(load_rgb(image))
        vis.add_datasample("prediction", img, result, draw_gt=False, show=False, out_file=out_file, with_labels=True)
