"""`mae-transfer export`: a trained ViTDet / UperNet, or an encoder, to ONNX and `torch.export`, with the
parity gate."""
from typing import List

from ..data import demo_photos
from ..data.images import load_rgb
from ..engine.config import resolve_config
from ..errors import ConfigError, DataError
from ..export.pipeline import export_model
from .common import Parser, number, path
from .predict import expand

DOC = """Export a trained model to ONNX (opset 18, ONNX Runtime) and to a torch.export program (.pt2), then
check on real images that each file computes what PyTorch computes (the parity gate; exit 1 if not).

  mae-transfer export det --config tiny_cpu --weights output/demo/det/model_final.pth --output-dir output/export/det
  mae-transfer export seg --config output/demo/seg/tiny_cpu.py --weights output/demo/seg/iter_150.pth \\
      --images scenes/val --output-dir output/export/seg
  mae-transfer export encoder --weights mae_pretrain_vit_base.pth --output-dir output/export/vit_b
  mae-transfer export seg --output-dir output/export/seg --check-only    # the gate again, on the folder alone

What is exported: det -> four graphs, ViTDet's backbone + feature pyramid, the RPN head, the box head and
the mask head (RoIAlign in them; detectron2's anchors, NMS, box decoding and mask pasting run between);
seg -> the whole UperNet on one crop_size window (mmseg's sliding window around it); encoder -> the ViT's
tokens. Dynamic batch, the model's fixed square size. Writes <graph>.onnx and <graph>.pt2 per graph
(model.* for seg / encoder), export.json and export_report.json; `mae-transfer predict --runtime
onnxruntime|torch-export --weights <this folder>` runs them.
"""


def main(argv: List[str], prog: str = "mae-transfer export"):
    p = Parser(prog, DOC)
    p.add_argument("kind", choices=["det", "seg", "encoder"])
    p.add_argument("--config", metavar="NAME|PATH", help="det/seg: the config the model was trained with")
    p.add_argument("--weights", help="det: model_final.pth; seg: iter_N.pth; encoder: any MAE checkpoint the "
                   "toolkit reads (not with --check-only: the folder's own copy is checked)")
    p.add_argument("--output-dir", "--out", type=path, dest="output_dir", default="output/export", metavar="DIR")
    p.add_argument("--to", default="onnx,pt2", help="comma-separated: onnx, pt2")
    p.add_argument("--images", nargs="+", help="the gate's images (files, folders, globs; default: the embedded "
                   "demo photos) -- your validation images are the better test")
    p.add_argument("--max-images", type=number(1, 10_000, int), default=8, help="at most this many gate images")
    p.add_argument("--img-size", type=number(16, 8192, int), help="encoder: input size (default: the checkpoint's)")
    p.add_argument("--check-only", action="store_true", help="re-run the gate on the files in --output-dir, from "
                   "the config and weights the folder carries")
    a = p.parse_args(argv)
    formats = [f.strip() for f in a.to.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("onnx", "pt2")]
    if bad or not formats:
        raise ConfigError(f"--to {a.to}: choose from onnx, pt2 (comma-separated)")
    if not a.check_only and not a.weights:
        raise ConfigError(f"export {a.kind} needs --weights (the trained model)")
    if not a.check_only and a.kind != "encoder" and not a.config:
        raise ConfigError(f"export {a.kind} needs --config (the config the model was trained with)")
    config = str(resolve_config(a.config, a.kind)) if a.kind != "encoder" and not a.check_only else None
    images = demo_photos()[: a.max_images]
    if a.images:
        images = [im for im in (load_rgb(f) for f in expand(a.images)[: a.max_images]) if im is not None]
        if not images:
            raise DataError("none of the --images could be decoded")
    report = export_model(a.kind, config, a.weights, a.output_dir, formats, images, a.img_size, a.check_only)
    print(f"parity holds on {report['images']} image(s): {a.output_dir}/export_report.json")
    return report
