"""`mae-transfer predict`: a trained detector or segmenter on images, drawn."""
import glob
import re
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import outputs
from ..data.images import IMG_EXTENSIONS, load_rgb
from ..engine.config import resolve_config
from ..errors import ConfigError, DataError
from ..export.graphs import run_with
from ..export.pipeline import exported
from ..reading import read_json
from ..schemas import CocoCategories
from .common import Parser, number, path

PREDICT_DOC = """Run a trained detector or segmenter on images and draw the result.

  mae-transfer predict det photos/ more/*.jpg --config tiny_cpu --weights output/demo/det/model_final.pth \\
      --classes-json val.json --output-dir output/predict/det
  mae-transfer predict seg photos/ --config output/demo/seg/tiny_cpu.py --weights output/demo/seg/iter_150.pth

Inputs: image files, folders or globs. Writes one overlay PNG per image (detectron2's Visualizer /
mmseg's SegLocalVisualizer) and machine-readable results: det -> coco_results.json (COCO results
format) + images.json (id -> file); seg -> <stem>_classes.png (class index per pixel) + classes.json.
Detection draws the detections above --score-thresh, and never fewer than --min-draw per image (the
model's top ones, whatever their score; the results file keeps only those above the threshold).
"""


def expand(inputs) -> List[Path]:
    """Image files, folders (searched recursively) and globs -> the image files, in order."""
    files = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            files += [Path(f) for f in sorted(glob.glob(x)) if Path(f).suffix.lower() in IMG_EXTENSIONS]
    if not files:
        raise DataError(f"no images found in {' '.join(map(str, inputs))}")
    return files


def device(name: str) -> str:
    """`auto` (cuda where there is one), `cpu`, or `cuda[:N]` of a GPU this machine has; else one ConfigError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name != "cpu" and not m:
        raise ConfigError(f"--device {name}: choose auto, cpu or cuda[:N]")
    if m and not (torch.cuda.is_available() and int(m.group(1) or 0) < torch.cuda.device_count()):
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def main(argv: List[str], prog: str = "mae-transfer predict"):
    p = Parser(prog, PREDICT_DOC)
    p.add_argument("task", choices=["det", "seg"])
    p.add_argument("inputs", nargs="+", help="images, folders or globs")
    p.add_argument("--config", metavar="NAME|PATH", help="the config the model was trained with (not with --runtime "
                   "onnxruntime|torch-export: the export folder carries its own)")
    p.add_argument("--weights", required=True, help="a trained model (detectron2 model_final.pth / mmseg iter_N.pth); "
                   "with --runtime onnxruntime|torch-export, the folder `mae-transfer export` wrote")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "torch-export"], default="torch",
                   help="what runs the network: PyTorch, ONNX Runtime (the .onnx files) or the torch.export programs")
    p.add_argument("--output-dir", "--out", type=path, dest="output_dir", default="output/predict", metavar="DIR")
    p.add_argument("--device", default="auto", help="auto (cuda where available) | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=number(1, 4096, int), default=4)
    p.add_argument("--score-thresh", type=number(0), default=0.5, help="det: keep detections above this score")
    p.add_argument("--min-draw", type=number(0, 10_000, int), default=0, metavar="K",
                   help="det: draw at least the K best detections of each image, whatever their score")
    p.add_argument("--classes-json", help="det: a COCO json whose categories name (and number) the classes")
    a = p.parse_args(argv)
    files, out = expand(a.inputs), Path(a.output_dir)
    names = outputs.unique_names(files)  # two inputs never write one output
    outputs.refuse_inputs([out], [*files, a.weights, a.config, a.classes_json])
    a.device = device(a.device)
    graphs = None
    if a.runtime != "torch":
        if a.config:
            p.error(f"--config with --runtime {a.runtime}: the export folder carries the config its graphs were "
                    f"made with; leave --config out")
        a.weights, a.config, graphs = exported(a.weights, a.task, a.runtime, a.device)
    elif not a.config:
        p.error("--config is required (the config the model was trained with)")
    config = str(resolve_config(a.config, a.task))
    cats = None
    if a.task == "det" and a.classes_json:
        cats = [c.model_dump() for c in read_json(a.classes_json, CocoCategories, ConfigError).categories]
    batches = [list(range(len(files)))[i:i + a.batch_size] for i in range(0, len(files), a.batch_size)]
    unreadable = []

    def images(batch):  # the one image reader: upright by EXIF, RGB; an unreadable file is skipped and named
        got = [(i, load_rgb(files[i])) for i in batch]
        unreadable.extend(str(files[i]) for i, im in got if im is None)
        return [(i, np.asarray(im)) for i, im in got if im is not None]

    with outputs.claim(out, markers_ok=True):
        if a.task == "det":
            from ..det.predict import DetPredictor  # detectron2: an optional host, imported when asked for

            thresh = 0.0 if a.min_draw else a.score_thresh  # the model keeps everything; drawn/written below
            pred = DetPredictor(config, a.weights, a.device, thresh, [c["name"] for c in cats] if cats else None)
            if graphs:
                run_with(pred, "det", graphs)
            results, table, drawn = [], [], 0
            for batch in tqdm(batches, desc="predict", unit="batch"):
                loaded = images(batch)
                for (i, img), inst in zip(loaded, pred([img for _, img in loaded]) if loaded else []):
                    table.append({"id": i, "file_name": str(files[i]), "output": f"{names[i]}_overlay.png"})
                    keep = inst[inst.scores >= a.score_thresh]
                    results += pred.to_coco(keep, i, [c["id"] for c in cats] if cats else None)
                    show = keep if len(keep) >= a.min_draw else inst[: a.min_draw]  # sorted by score
                    drawn += len(show)
                    outputs.write_with(out / f"{names[i]}_overlay.png",
                                       lambda tmp: Image.fromarray(pred.draw(img, show)).save(tmp, format="PNG"))
            outputs.write_json(out / "coco_results.json", results, indent=None)
            outputs.write_json(out / "images.json", table)
            print(f"{len(results)} detections >= {a.score_thresh} in {len(table)} images ({drawn} drawn) -> "
                  f"{out}/coco_results.json, *_overlay.png")
        else:
            from ..seg.predict import SegPredictor  # mmseg: an optional host, imported when asked for

            pred = SegPredictor(config, a.weights, a.device)
            if graphs:
                run_with(pred, "seg", graphs)
            done = 0
            for batch in tqdm(batches, desc="predict", unit="batch"):
                loaded = images(batch)
                bgr = [img[:, :, ::-1].copy() for _, img in loaded]  # mmseg's pipeline takes BGR arrays
                for (i, img), res in zip(loaded, pred(bgr) if bgr else []):
                    outputs.write_with(out / f"{names[i]}_classes.png",
                                       lambda tmp: Image.fromarray(pred.class_map(res)).save(tmp, format="PNG"))
                    outputs.write_with(out / f"{names[i]}_overlay.png", lambda tmp: pred.draw(img, res, tmp))
                    done += 1
            outputs.write_json(out / "classes.json", pred.classes, indent=None)
            print(f"{done} images -> {out}/*_classes.png (class index per pixel), *_overlay.png")
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}", file=sys.stderr)
