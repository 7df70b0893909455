"""The export pipeline: a trained ViTDet, UperNet or bare encoder to ONNX and to a `torch.export` program,
the files kept only if they compute what PyTorch computes (`parity`). What each graph holds: `graphs`.

    report = export_model("seg", "configs/seg/tiny_cpu.py", "output/demo/seg/iter_150.pth", "output/export/seg")
    graph = load_runtime("output/export/seg/model.onnx")     # x: [N, 3, S, S] -> [logits]

The folder gets one .onnx and one .pt2 per graph (model.* for an encoder or a segmenter; backbone, rpn,
box_head, mask_head for a detector), export.json (what `predict --runtime` needs to run them) and
export_report.json (the parity table, per runtime)."""
import io
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .. import checkpoints, outputs, reading, schemas
from ..data import demo_photos
from ..identify import expect
from . import folder, graphs, parity
from .parity import ParityError
from .parts import Exportable, Graph, Part

FORMATS = ("onnx", "pt2")
RUNTIMES = {"onnxruntime": "onnx", "torch-export": "pt2"}  # runtime -> the format it runs
OPSET = 18


def load_runtime(path, device: str = "cpu") -> Graph:
    """An exported file as a function *inputs -> [outputs]: ONNX Runtime for .onnx (CUDA provider where asked
    for and present), the deserialised `torch.export` program for .pt2."""
    path = Path(path)
    if not path.is_file():
        raise checkpoints.CheckpointError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnxruntime as ort  # an optional host (the export extra)

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


# every member a tensors-only torch.export archive may hold (as torch.export.save writes it); anything else
# (custom or opaque objects, AOTInductor libraries, pickled files) is refused before torch sees the file
_PT2_MEMBERS = re.compile(r"^(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
                          r"|models/[\w.-]+\.json|extra/[\w.-]+\.json|data/sample_inputs/[\w.-]+\.pt"
                          r"|data/weights/(weight_\d+|[\w.-]+_weights_config\.json|[\w.-]+_model_param_config\.json)"
                          r"|data/constants/(tensor_\d+|[\w.-]+_constants_config\.json"
                          r"|[\w.-]+_model_constants_config\.json))$")


def check_pt2(path: Path) -> None:
    """Refuse a .pt2 that could run code when loaded. Read with torch's own archive reader (what
    torch.export.load reads, so no second opinion on member names), every member must be one a tensors-only
    program has, and every entry of every weights and constants config -- which is what decides what
    torch.export.load unpickles -- must name a plain tensor file (`schemas.Pt2Payload`: `weight_N`/`tensor_N`,
    no pickle)."""
    # torch's private reader: imported where used, so a torch without it fails only here
    from torch.export.pt2_archive._package import PT2ArchiveReader

    try:
        reader = PT2ArchiveReader(str(path))
        names = reader.get_file_names()
    except Exception as e:  # not a zip, not a pt2 archive
        raise checkpoints.CheckpointError(f"{path}: not a torch.export program ({str(e).splitlines()[0]})") from None
    odd = [n for n in names if not _PT2_MEMBERS.match(n)]
    if odd:
        raise checkpoints.CheckpointError(f"{path}: holds {odd[0]!r}, which a tensors-only program does not "
                                          f"(objects or libraries that would run code when loaded); refused")
    for name in names:
        if name.startswith("data/sample_inputs/"):  # torch.load'ed by torch.export.load: tensors (or None) only
            data = reader.read_bytes(name)
            try:  # (empty where the program was saved without example inputs, as the toolkit saves them)
                data and torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:
                raise checkpoints.CheckpointError(f"{path}: {name} is not plain tensors ({type(e).__name__}); "
                                                  f"refused") from None
        if name.endswith(("_weights_config.json", "_constants_config.json")):
            try:
                obj = reading.parse_json(reader.read_bytes(name), name)
            except ValueError as e:
                raise checkpoints.CheckpointError(f"{path}: {name}: {e}") from None
            cfg = reading.validate(obj, schemas.Pt2Config, checkpoints.CheckpointError, f"{path}: {name}")
            absent = [m.path_name for m in cfg.config.values()
                      if f"{name.rsplit('/', 1)[0]}/{m.path_name}" not in names]
            if absent:
                raise checkpoints.CheckpointError(f"{path}: {name} names {absent[0]}, which the archive lacks")


def _load_program(path: Path):
    """A .pt2 program with tensors only (`check_pt2` first); every torch.load inside is held to the safe
    reader as a second guard."""
    check_pt2(path)
    flag, before = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ[flag] = "1"  # torch.load reads it at each call: for the duration of this load only
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # a damaged or foreign archive: one line
        raise checkpoints.CheckpointError(f"{path}: not a tensors-only torch.export program "
                                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if before is None:
            os.environ.pop(flag, None)
        else:
            os.environ[flag] = before


def trace(part: Part):
    """`torch.export` once (dynamic batch / RoI count): the program both files are written from."""
    with torch.no_grad():
        return torch.export.export(part.module, part.inputs, dynamic_shapes=(tuple(part.dynamic),))  # forward(*xs)


def write(program, part: Part, path: Path, fmt: str) -> Path:
    if fmt == "pt2":
        inputs, program.example_inputs = program.example_inputs, None  # not saved: a det head's are 100s of MB
        try:
            outputs.write_with(path, lambda tmp: torch.export.save(program, tmp))
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


def end_to_end(ex: Exportable, runs: Optional[Dict[str, Graph]], images: Sequence, batch: int = 2) -> list:
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


NEEDS = {"det": ("detector",), "seg": ("segmentor",), "encoder": ("mae", "encoder", "classifier")}


def export_model(kind: str, config: Optional[str], weights: Optional[str], out, formats: Sequence[str] = FORMATS,
           images: Optional[Sequence] = None, img_size: Optional[int] = None, check_only: bool = False) -> dict:
    """Export into `out` (or with `check_only`, re-check the files exported there, from the folder's own config
    and weights), run the parity gate on `images` (PIL; default: the embedded demo photos), write
    export_report.json and, when parity holds, export.json. ParityError (after writing the report) when it
    does not. The folder is claimed like a run's (a lock; a folder holding an export is not overwritten)."""

    out = Path(out)
    if check_only:  # the folder's own snapshot: what its graphs were made from, unchanged since
        if not (out / folder.META).is_file():
            raise checkpoints.CheckpointError(f"--check-only: {out} holds no {folder.META} (export it first)")
        meta = folder.read_meta(out, kind)
        folder.verify(out, meta, [meta.weights, *([meta.config] if meta.config else [])])
        if meta.config:
            folder.check_config(out / meta.config)
        config, weights = (str(out / meta.config) if meta.config else None), str(out / meta.weights)
        formats = [f for f in formats if f in meta.files] or list(meta.files)
        img_size = img_size or meta.size
    else:
        expect(weights, NEEDS[kind], f"export {kind}")
        outputs.refuse_inputs([out], [weights, config])
    with outputs.claim(out, resume=check_only):
        ex = graphs.build(kind, config, weights, img_size)
        files = {f: {name: out / f"{name}.{f}" for name in ex.parts} for f in formats}
        missing = [p for f in files.values() for p in f.values() if not p.is_file()]
        if check_only and missing:
            raise checkpoints.CheckpointError(f"--check-only: {missing[0]} not found (export it first)")
        if not check_only:
            weights, config = folder.snapshot_weights(weights, out), folder.snapshot_config(kind, config, out)
            for name, part in ex.parts.items():
                print(f"tracing {kind} {name} ({', '.join(part.input_names)}; dynamic batch) with torch.export ...",
                      file=sys.stderr)
                program = trace(part)
                for fmt in formats:
                    print(f"writing {files[fmt][name]} ...", file=sys.stderr)
                    write(program, part, files[fmt][name], fmt)
        images = list(images) if images else demo_photos()
        report = gate(ex, files, images)
        meta = {"kind": kind, "config": Path(config).name if config else None, "weights": Path(weights).name,
                "size": ex.size, "graphs": {name: {"inputs": p.shapes(), "outputs": p.outputs}
                                            for name, p in ex.parts.items()},
                "files": {f: {name: p.name for name, p in paths.items()} for f, paths in files.items()},
                "sha256": folder.hashes(out), "opset": OPSET, "torch": torch.__version__, **ex.meta}
        full = {**meta, "images": len(images), "runtimes": report,
                "tolerances": {"relative max difference": parity.REL_TOL, "box IoU": parity.BOX_IOU,
                               "score": parity.SCORE_TOL, "mask IoU": parity.MASK_IOU, "pixels": parity.PIXELS},
                "parity": not any(r["failed"] for r in report.values())}
        outputs.write_json(out / folder.REPORT, full)
        print(parity.table(report))
        if full["parity"]:  # what predict --runtime trusts: only files that passed the gate
            reading.validate(meta, schemas.ExportMeta, checkpoints.CheckpointError, "export.json")  # writes what reads
            outputs.write_json(out / folder.META, meta)
    failed = [f"{name}: {f}" for name, r in report.items() for f in r["failed"]]
    if failed:
        raise ParityError(f"parity does not hold ({'; '.join(failed[:3])}); see {out / folder.REPORT}")
    return full


def exported(where, kind: str, runtime: str, device: str = "cpu"):
    """A folder `export` wrote (or a file in it) -> (its weights, its config, {part: graph} of `runtime`): what
    `predict --runtime` runs, every file read from the folder and checked against export.json's hashes."""
    where = Path(where)
    out = where if where.is_dir() else where.parent
    meta = folder.read_meta(out, kind)
    paths = folder.runtime_files(out, meta, RUNTIMES[runtime])
    config = str(out / meta.config) if meta.config else None
    return str(out / meta.weights), config, {name: load_runtime(p, device) for name, p in paths.items()}
