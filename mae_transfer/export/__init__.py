"""Export a trained ViTDet, UperNet or bare encoder to ONNX and to a `torch.export` program, and keep the
files only if they compute what PyTorch computes (`parity`). What each graph holds: `graphs`.

    report = export("seg", "configs/seg/tiny_cpu.py", "output/demo/seg/iter_150.pth", "output/export/seg")
    graph = load_runtime("output/export/seg/model.onnx")     # x: [N, 3, S, S] -> [logits]

The folder gets one .onnx and one .pt2 per graph (model.* for an encoder or a segmenter; backbone, rpn,
box_head, mask_head for a detector), export.json (what `predict --runtime` needs to run them) and
export_report.json (the parity table, per runtime)."""
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .. import checkpoints
from . import graphs, parity
from .graphs import KINDS, Exportable  # noqa: F401
from .parity import ParityError  # noqa: F401

FORMATS = ("onnx", "pt2")
RUNTIMES = {"onnxruntime": "onnx", "torch-export": "pt2"}  # runtime -> the format it runs
OPSET = 18


def load_runtime(path, device: str = "cpu") -> graphs.Graph:
    """An exported file as a function *inputs -> [outputs]: ONNX Runtime for .onnx (CUDA provider where asked
    for and present), the deserialised `torch.export` program for .pt2."""
    path = Path(path)
    if not path.is_file():
        raise checkpoints.CheckpointError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        cuda = device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
        opts = ort.SessionOptions()
        # ORT's CPU arena keeps what it grew to and grows again on later runs (ViTDet-B 1024, batch 2: 7.1 GiB
        # peak after one run, 13.4 after two; without it 7.5 after each, ~5 % slower): off, for long predicts
        opts.enable_cpu_mem_arena = False
        sess = ort.InferenceSession(str(path), opts,
                                    providers=["CUDAExecutionProvider"] * cuda + ["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def run(*xs):
            feed = {n: x.detach().cpu().numpy() for n, x in zip(names, xs)}
            return [torch.from_numpy(o).to(xs[0].device) for o in sess.run(None, feed)]
        return run
    program = _load_program(path)

    def run_program(*xs):
        with torch.no_grad():
            return list(program(*xs))
    return run_program


def _load_program(path: Path):
    """A .pt2 program with tensors only. torch.export.load reads tensors with torch.load (retrying with a
    full unpickler when the safe read fails) and unpickles custom / opaque constant objects: the latter
    are refused from the archive's listing, and every torch.load inside is held to the safe reader."""
    import os
    import zipfile

    from torch.export.pt2_archive import constants as pt2

    try:
        names = zipfile.ZipFile(path).namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise checkpoints.CheckpointError(f"{path}: not a torch.export program ({e})") from None
    objects = [n for n in names if pt2.CONSTANTS_DIR in n and (
        n.rsplit("/", 1)[-1].startswith((pt2.CUSTOM_OBJ_FILENAME_PREFIX, pt2.OPAQUE_OBJ_FILENAME_PREFIX))
        or n.endswith(".pt"))]  # pickled objects (and the legacy pickled constants file)
    if objects:
        raise checkpoints.CheckpointError(f"{path}: holds pickled objects ({objects[0]}), which would run code "
                                          f"when loaded; refused (the toolkit's exports hold tensors only)")
    flag, before = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ[flag] = "1"  # torch.load reads it at each call: for the duration of this load only
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # a damaged, foreign or pickle-bearing archive: one line
        raise checkpoints.CheckpointError(f"{path}: not a tensors-only torch.export program "
                                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if before is None:
            os.environ.pop(flag, None)
        else:
            os.environ[flag] = before


def trace(part: graphs.Part):
    """`torch.export` once (dynamic batch / RoI count): the program both files are written from."""
    with torch.no_grad():
        return torch.export.export(part.module, part.inputs, dynamic_shapes=(tuple(part.dynamic),))  # forward(*xs)


def write(program, part: graphs.Part, path: Path, fmt: str) -> Path:
    if fmt == "pt2":
        inputs, program.example_inputs = program.example_inputs, None  # not saved: a det head's are 100s of MB
        try:
            torch.export.save(program, str(path))
        finally:
            program.example_inputs = inputs
    else:
        size = sum(t.numel() * t.element_size() for t in [*part.module.parameters(), *part.module.buffers()])
        torch.onnx.export(program, part.inputs, str(path), dynamo=True, opset_version=OPSET,
                          input_names=part.input_names, output_names=part.outputs, verbose=False,
                          external_data=size > 1.5 * 2**30)  # one file, unless protobuf's 2 GB limit forbids it
    return path


def _batches(items: Sequence, n: int) -> List[Sequence]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def end_to_end(ex: Exportable, runs: Optional[Dict[str, graphs.Graph]], images: Sequence, batch: int = 2) -> list:
    """What the predictor makes of `images` with `runs` (part -> graph; None: the host's own modules) as
    its networks: det Instances, seg class maps, encoder: the graph's outputs."""
    if ex.kind == "encoder":
        run = runs["model"] if runs else graphs.eager(ex.parts["model"])
        return [run(x) for x in _batches(graphs.encoder_inputs(images, ex.size), batch)]
    graphs.run_with(ex.predictor, ex.kind, runs)
    arrays = graphs.as_arrays(images)
    if ex.kind == "det":
        return [inst for b in _batches(arrays, batch) for inst in ex.predictor(list(b))]
    bgr = [a[:, :, ::-1].copy() for a in arrays]  # mmseg's pipeline takes BGR arrays, as cv2 reads them
    return [ex.predictor.class_map(ex.predictor([a])[0]) for a in bgr]  # one at a time: sizes differ


def gate(ex: Exportable, files: Dict[str, Dict[str, Path]], images: Sequence, batch: int = 2) -> Dict[str, dict]:
    """Eager PyTorch through the parts (recording what each is given and returns), then each exported file
    on exactly those inputs, and end to end against the host's own forward -> {runtime: {"rows": {...},
    "failed": [...]}}. A part the images never reach (no detections: no mask head) is checked on its
    example inputs."""
    seen: Dict[str, list] = {name: [] for name in ex.parts}

    def recording(name):
        run = graphs.eager(ex.parts[name])

        def rec(*xs):
            seen[name].append((xs, run(*xs)))
            return seen[name][-1][1]
        return rec
    recorded = end_to_end(ex, {name: recording(name) for name in ex.parts}, images, batch)
    # det's RoI graphs regroup detectron2's pooler (every level, then a gather): the reference is its own forward
    ref = end_to_end(ex, None, images, batch) if ex.kind == "det" else recorded
    for name, part in ex.parts.items():
        seen[name] = seen[name] or [(part.inputs, graphs.eager(part)(*part.inputs))]
    report = {}
    for runtime, fmt in RUNTIMES.items():
        if fmt not in files:
            continue
        runs = {name: load_runtime(path) for name, path in files[fmt].items()}
        rows = {}
        for name, part in ex.parts.items():
            rows.update(parity.graph_rows([out for _, out in seen[name]], [runs[name](*xs) for xs, _ in seen[name]],
                                          part.rows))
        if ex.kind == "det":
            box = ex.predictor.model.roi_heads.box_predictor
            rows.update(parity.det_rows(ref, end_to_end(ex, runs, images, batch), box.test_score_thresh,
                                        box.test_topk_per_image))
        elif ex.kind == "seg":
            rows.update(parity.seg_rows(ref, end_to_end(ex, runs, images, batch)))
        report[runtime] = {"rows": rows, "failed": parity.verdict(rows, ex.rows)}
        if ex.predictor is not None:  # this runtime's sessions go before the next one loads
            graphs.run_with(ex.predictor, ex.kind, None)
        del runs
    return report


def export(kind: str, config: Optional[str], weights: str, out, formats: Sequence[str] = FORMATS,
           images: Optional[Sequence] = None, img_size: Optional[int] = None, check_only: bool = False) -> dict:
    """Export (or with `check_only`, re-check files already exported into `out`), run the parity gate on
    `images` (PIL; default: the embedded demo photos), write export.json and export_report.json.
    ParityError (after writing the report) when parity does not hold."""
    from ..data import demo_photos

    out = Path(out)
    ex = graphs.build(kind, config, weights, img_size)
    out.mkdir(parents=True, exist_ok=True)
    files = {f: {name: out / f"{name}.{f}" for name in ex.parts} for f in formats}
    missing = [p for f in files.values() for p in f.values() if not p.is_file()]
    if check_only and missing:
        raise checkpoints.CheckpointError(f"--check-only: {missing[0]} not found (export it first)")
    if check_only:
        for path in files.get("pt2", {}).values():
            _trusted(out, path)  # the gate re-checks what it passed before, not a file put there since
    else:
        for name, part in ex.parts.items():
            print(f"tracing {kind} {name} ({', '.join(part.input_names)}; dynamic batch) with torch.export ...",
                  file=sys.stderr)
            program = trace(part)
            for fmt in formats:
                print(f"writing {files[fmt][name]} ...", file=sys.stderr)
                write(program, part, files[fmt][name], fmt)
    images = list(images) if images else demo_photos()
    report = gate(ex, files, images)
    meta = {"kind": kind, "config": str(Path(config).resolve()) if config else None,
            "weights": str(Path(weights).resolve()), "weights_sha256": _sha(weights), "size": ex.size,
            "graphs": {name: {"inputs": p.shapes(), "outputs": p.outputs} for name, p in ex.parts.items()},
            "files": {f: {name: p.name for name, p in paths.items()} for f, paths in files.items()},
            "sha256": {p.name: _sha(p) for paths in files.values() for p in paths.values()},
            "opset": OPSET, "torch": torch.__version__, **ex.meta}
    full = {**meta, "images": len(images), "runtimes": report,
            "tolerances": {"relative max difference": parity.REL_TOL, "box IoU": parity.BOX_IOU,
                           "score": parity.SCORE_TOL, "mask IoU": parity.MASK_IOU, "pixels": parity.PIXELS},
            "parity": not any(r["failed"] for r in report.values())}
    (out / "export_report.json").write_text(json.dumps(full, indent=1) + "\n")
    print(parity.table(report))
    if full["parity"]:  # what predict --runtime trusts: only files that passed the gate
        (out / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    failed = [f"{name}: {f}" for name, r in report.items() for f in r["failed"]]
    if failed:
        raise ParityError(f"parity does not hold ({'; '.join(failed[:3])}); see {out / 'export_report.json'}")
    return full


def exported(where, kind: str, runtime: str, config: Optional[str] = None, device: str = "cpu"):
    """A folder `export` wrote (or a file in it) -> (trained weights, config, {part: graph} of `runtime`):
    what `predict --runtime` runs. The folder's export.json names the config and weights it was made from."""
    where = Path(where)
    folder = where if where.is_dir() else where.parent
    try:
        meta = json.loads((folder / "export.json").read_text())
    except (OSError, ValueError):
        raise checkpoints.CheckpointError(f"{where}: no export.json (pass the folder `mae-transfer export` "
                                          f"wrote)") from None
    if meta.get("kind") != kind:
        raise checkpoints.CheckpointError(f"{folder} holds an exported {meta.get('kind')}, not a {kind} model")
    fmt, files = RUNTIMES[runtime], meta.get("files", {})
    if fmt not in files:
        raise checkpoints.CheckpointError(f"{folder} has no {fmt} file (exported: {', '.join(files)}); "
                                          f"export with --to {fmt}")
    if not isinstance(files[fmt], dict):
        raise checkpoints.CheckpointError(f"{folder} was exported by an older mae-transfer (one graph per file "
                                          f"format); export again")
    paths = {name: folder / f for name, f in files[fmt].items()}
    for path in paths.values():
        _trusted(folder, path, meta)
    w = Path(meta["weights"])  # the trained model around the graph (det heads, mmseg's model config)
    if not w.is_file() or _sha(w) != meta.get("weights_sha256"):
        raise checkpoints.CheckpointError(f"{w}: {'not found' if not w.is_file() else 'changed since the export'}; "
                                          f"the exported graph runs with the trained model it came from")
    return meta["weights"], config or meta["config"], {name: load_runtime(p, device) for name, p in paths.items()}


def _trusted(folder: Path, path: Path, meta: Optional[dict] = None) -> None:
    """`path` is the file that passed the gate: export.json records its SHA-256 (so predict never runs a
    graph that was changed, or never checked, after the export)."""
    if meta is None:
        try:
            meta = json.loads((folder / "export.json").read_text())
        except (OSError, ValueError):
            meta = {}
    if not path.is_file() or meta.get("sha256", {}).get(path.name) != _sha(path):
        raise checkpoints.CheckpointError(f"{path} is not a file `mae-transfer export` wrote and checked (no "
                                          f"SHA-256 match in {folder / 'export.json'}); export again")


def _sha(path) -> str:
    from ..results import sha256
    return sha256(path)
