"""Export a trained ViTDet, UperNet or bare encoder to ONNX and to a `torch.export` program, and keep the
files only if they compute what PyTorch computes (`parity`). What each graph holds: `graphs`.

    report = export("seg", "configs/seg/tiny_cpu.py", "output/demo/seg/iter_150.pth", "output/export/seg")
    graph = load_runtime("output/export/seg/model.onnx")     # x: [N, 3, S, S] -> [logits]

The folder gets model.onnx, model.pt2, export.json (what `predict --runtime` needs to run them) and
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

FILES = {"onnx": "model.onnx", "pt2": "model.pt2"}
RUNTIMES = {"onnxruntime": "onnx", "torch-export": "pt2"}  # runtime -> the format it runs
OPSET = 18


def load_runtime(path, device: str = "cpu") -> graphs.Graph:
    """An exported file as a function x -> [outputs]: ONNX Runtime for .onnx (CUDA provider where asked
    for and present), the deserialised `torch.export` program for .pt2."""
    path = Path(path)
    if not path.is_file():
        raise checkpoints.CheckpointError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnxruntime as ort

        cuda = device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"] * cuda + ["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x):
            return [torch.from_numpy(o).to(x.device) for o in sess.run(None, {name: x.detach().cpu().numpy()})]
        return run
    program = _load_program(path)

    def run_program(x):
        with torch.no_grad():
            return list(program(x))
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


def trace(ex: Exportable):
    """`torch.export` once (dynamic batch): the program both files are written from."""
    x = torch.randn(2, 3, ex.size, ex.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.export.export(ex.module, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1,
                                                                                              max=1024)}})


def write(program, ex: Exportable, path: Path, fmt: str) -> Path:
    if fmt == "pt2":
        torch.export.save(program, str(path))
    else:
        size = sum(t.numel() * t.element_size() for t in [*ex.module.parameters(), *ex.module.buffers()])
        torch.onnx.export(program, (program.example_inputs[0][0],), str(path), dynamo=True, opset_version=OPSET,
                          input_names=["x"], output_names=ex.names, verbose=False,
                          external_data=size > 1.5 * 2**30)  # one file, unless protobuf's 2 GB limit forbids it
    return path


def _batches(items: Sequence, n: int) -> List[Sequence]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def end_to_end(ex: Exportable, graph: graphs.Graph, images: Sequence, batch: int = 2) -> list:
    """What the predictor makes of `images` with `graph` as its network: det Instances, seg class maps,
    encoder: the graph's outputs."""
    if ex.kind == "encoder":
        return [graph(x) for x in _batches(graphs.encoder_inputs(images, ex.size), batch)]
    graphs.run_with(ex.predictor, ex.kind, graph)
    arrays = graphs.as_arrays(images)
    if ex.kind == "det":
        return [inst for b in _batches(arrays, batch) for inst in ex.predictor(list(b))]
    bgr = [a[:, :, ::-1].copy() for a in arrays]  # mmseg's pipeline takes BGR arrays, as cv2 reads them
    return [ex.predictor.class_map(ex.predictor([a])[0]) for a in bgr]  # one at a time: sizes differ


def gate(ex: Exportable, files: Dict[str, Path], images: Sequence, batch: int = 2) -> Dict[str, dict]:
    """Eager PyTorch once (recording what its network is given and returns), then each exported file on
    exactly those inputs and end to end -> {runtime: {"rows": {...}, "failed": [...]}}."""
    seen_in, seen_out, eager = [], [], graphs.eager(ex)

    def recording(x):
        seen_in.append(x.detach().clone())
        seen_out.append(eager(x))
        return seen_out[-1]
    ref = end_to_end(ex, recording, images, batch)
    report = {}
    for runtime, fmt in RUNTIMES.items():
        if fmt not in files:
            continue
        run = load_runtime(files[fmt])
        rows = parity.graph_rows(seen_out, [run(x) for x in seen_in], ex.names)
        if ex.kind == "det":
            rows.update(parity.det_rows(ref, end_to_end(ex, run, images, batch), 0.05))
        elif ex.kind == "seg":
            rows.update(parity.seg_rows(ref, end_to_end(ex, run, images, batch)))
        report[runtime] = {"rows": rows, "failed": parity.verdict(rows, ex.names)}
    if ex.predictor is not None:
        graphs.run_with(ex.predictor, ex.kind, eager)
    return report


def export(kind: str, config: Optional[str], weights: str, out, formats: Sequence[str] = ("onnx", "pt2"),
           images: Optional[Sequence] = None, img_size: Optional[int] = None, check_only: bool = False) -> dict:
    """Export (or with `check_only`, re-check files already exported into `out`), run the parity gate on
    `images` (PIL; default: the embedded demo photos), write export.json and export_report.json.
    ParityError (after writing the report) when parity does not hold."""
    from ..data import demo_photos

    out = Path(out)
    ex = graphs.build(kind, config, weights, img_size)
    out.mkdir(parents=True, exist_ok=True)
    files = {f: out / FILES[f] for f in formats}
    missing = [p for p in files.values() if not p.is_file()]
    if check_only and missing:
        raise checkpoints.CheckpointError(f"--check-only: {missing[0]} not found (export it first)")
    if check_only and "pt2" in files:
        _trusted(out, files["pt2"])  # the gate re-checks what it passed before, not a file put there since
    if not check_only:
        print(f"tracing {kind} ({ex.size}x{ex.size}, dynamic batch) with torch.export ...", file=sys.stderr)
        program = trace(ex)
        for fmt, path in files.items():
            print(f"writing {path} ...", file=sys.stderr)
            write(program, ex, path, fmt)
    images = list(images) if images else demo_photos()
    report = gate(ex, files, images)
    meta = {"kind": kind, "config": str(Path(config).resolve()) if config else None,
            "weights": str(Path(weights).resolve()), "weights_sha256": _sha(weights), "size": ex.size,
            "inputs": {"x": ["batch", 3, ex.size, ex.size]}, "outputs": ex.names,
            "files": {f: p.name for f, p in files.items()}, "sha256": {p.name: _sha(p) for p in files.values()},
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
    """A folder `export` wrote (or a file in it) -> (trained weights, config, graph of `runtime`): what
    `predict --runtime` runs. The folder's export.json names the config and weights it was made from."""
    where = Path(where)
    folder = where if where.is_dir() else where.parent
    try:
        meta = json.loads((folder / "export.json").read_text())
    except (OSError, ValueError):
        raise checkpoints.CheckpointError(f"{where}: no export.json (pass the folder `mae-transfer export` "
                                          f"wrote)") from None
    if meta.get("kind") != kind:
        raise checkpoints.CheckpointError(f"{folder} holds an exported {meta.get('kind')}, not a {kind} model")
    fmt = RUNTIMES[runtime]
    if fmt not in meta.get("files", {}):
        raise checkpoints.CheckpointError(f"{folder} has no {fmt} file (exported: {', '.join(meta['files'])}); "
                                          f"export with --to {fmt}")
    path = folder / meta["files"][fmt]
    _trusted(folder, path, meta)
    w = Path(meta["weights"])  # the trained model around the graph (det heads, mmseg's model config)
    if not w.is_file() or _sha(w) != meta.get("weights_sha256"):
        raise checkpoints.CheckpointError(f"{w}: {'not found' if not w.is_file() else 'changed since the export'}; "
                                          f"the exported graph runs with the trained model it came from")
    return meta["weights"], config or meta["config"], load_runtime(path, device)


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
