"""An export folder travels alone: it holds everything `predict --runtime` needs -- the graphs (and an ONNX
graph's external data file), a snapshot of the config (executed by the host when it loads it) and of the
trained weights the Python parts use -- and export.json (`schemas.ExportMeta`) records the SHA-256 of every
file in it. Nothing outside the folder is read, and nothing in it runs unless its hash matches."""
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from .. import outputs, schemas
from ..errors import CheckpointError
from ..results import sha256

META, REPORT = "export.json", "export_report.json"
NOT_HASHED = {META, REPORT, outputs.LOCK}


def snapshot_weights(weights, out: Path) -> Path:
    """The trained weights beside the graphs (a hard link where the file system allows, else a copy)."""
    dest = out / ("weights" + (Path(weights).suffix or ".pth"))

    def put(tmp):
        os.unlink(tmp)
        try:
            os.link(weights, tmp)
        except OSError:
            shutil.copyfile(weights, tmp)
    return outputs.write_with(dest, put)


def snapshot_config(kind: str, config: Optional[str], out: Path) -> Optional[Path]:
    """The config as the host loaded it, in a file that loads on its own (its bases resolved): detectron2's
    LazyConfig as YAML, mmengine's Config as one .py."""
    if config is None:
        return None
    if kind == "det":
        from detectron2.config import LazyConfig

        dest = out / "config.yaml"
        outputs.write_with(dest, lambda tmp: LazyConfig.save(LazyConfig.load(config), tmp))
        if (out / "config.yaml.pkl").exists() or any(out.glob(".config.yaml*.pkl")):  # d2's pickle fallback
            raise CheckpointError(f"{config}: the config does not serialise to YAML (LazyConfig.save pickled it); "
                                  f"an export folder carries no pickles")
        return dest
    from mmengine.config import Config

    dest = out / "config.py"
    outputs.write_with(dest, lambda tmp: Config.fromfile(config).dump(tmp))
    return dest


def hashes(out: Path) -> dict:
    """SHA-256 of every file in the folder but the metadata and the lock."""
    return {p.name: sha256(p) for p in sorted(out.iterdir())
            if p.is_file() and not p.is_symlink() and p.name not in NOT_HASHED and not p.name.startswith(".")}


def read_meta(folder: Path, kind: Optional[str] = None) -> schemas.ExportMeta:
    """export.json through its schema (one line for any malformed variant), of the kind asked for."""
    if not (folder / META).is_file():
        raise CheckpointError(f"{folder}: no {META} (pass the folder `mae-transfer export` wrote, after its parity "
                              f"gate passed)")
    meta = schemas.read_json(folder / META, schemas.ExportMeta, CheckpointError, "export metadata")
    if kind and meta.kind != kind:
        raise CheckpointError(f"{folder} holds an exported {meta.kind}, not a {kind} model")
    return meta


def verify(folder: Path, meta: schemas.ExportMeta, names: Sequence[str]) -> None:
    """Each named file is in the folder (a file, not a link) with the SHA-256 export.json records."""
    for name in names:
        path = folder / name
        if not path.is_file() or path.is_symlink() or meta.sha256.get(name) != sha256(path):
            raise CheckpointError(f"{path} is not a file `mae-transfer export` wrote and checked (no SHA-256 match "
                                  f"in {folder / META}); export again")


def runtime_files(folder: Path, meta: schemas.ExportMeta, fmt: str) -> dict:
    """{graph: path} of one format, with every file the Python parts and that runtime read verified."""
    if fmt not in meta.files:
        raise CheckpointError(f"{folder} has no {fmt} file (exported: {', '.join(meta.files)}); export with --to {fmt}")
    graphs = meta.files[fmt]
    data = [n for n in meta.sha256 if any(n.startswith(g + ".") and n != g for g in graphs.values())]
    verify(folder, meta, [meta.weights, *([meta.config] if meta.config else []), *graphs.values(), *data])
    return {name: folder / f for name, f in graphs.items()}
