"""An export folder travels alone: it holds everything `predict --runtime` needs -- the graphs (and an ONNX
graph's external data file), a snapshot of the config (executed by the host when it loads it) and of the
trained weights the Python parts use -- and export.json (`schemas.ExportMeta`) records the SHA-256 of every
file in it. Nothing outside the folder is read, and nothing in it runs unless its hash matches."""
import shutil
from pathlib import Path
from typing import Optional, Sequence

from .. import outputs, reading, schemas
from ..errors import CheckpointError
from ..results import sha256

META, REPORT = "export.json", "export_report.json"
NOT_HASHED = {META, REPORT, outputs.LOCK}


def snapshot_weights(weights, out: Path) -> Path:
    """The trained weights beside the graphs: a copy, not a hard link (a host that rewrites its checkpoint in
    place, as detectron2 does model_final.pth on a resumed run, would change the export's file through it)."""
    dest = out / ("weights" + (Path(weights).suffix or ".pth"))
    return outputs.write_with(dest, lambda tmp: shutil.copyfile(weights, tmp))


def snapshot_config(kind: str, config: Optional[str], out: Path) -> Optional[Path]:
    """The config as the host loaded it, in a file that loads on its own (its bases resolved) and is data, not
    code: detectron2's LazyConfig and mmengine's Config each as YAML (checked by `check_config` before use)."""
    if config is None:
        return None
    if kind == "det":
        from detectron2.config import LazyConfig  # detectron2: an optional host, for det folders

        dest = out / "config.yaml"
        outputs.write_with(dest, lambda tmp: LazyConfig.save(LazyConfig.load(config), tmp))
        pickled = list(out.glob(".config.yaml*.pkl"))  # detectron2's fallback when YAML cannot hold the config
        for p in pickled:
            p.unlink()
        if pickled:
            raise CheckpointError(f"{config}: the config does not serialise to YAML (LazyConfig.save pickled it); "
                                  f"an export folder carries no pickles")
        return dest
    from mmengine.config import Config  # mmseg's mmengine: an optional host, for seg folders

    dest = out / "config.yaml"  # data, not code: a .py config would be executed by whoever loads the folder
    outputs.write_with(dest, lambda tmp: Config.fromfile(config).dump(tmp))  # (YAML keeps tuples; JSON would not)
    return dest


# what a detectron2 config in an export folder may instantiate (LazyConfig calls each `_target_` it names)
TARGETS = ("detectron2.", "mae_transfer.", "fvcore.", "torch.nn.", "torch.optim.")


def check_config(path: Path) -> None:
    """An export folder's config is data the hosts turn into objects: refuse what would run anything else --
    YAML tags that build Python objects (detectron2 and mmengine load YAML unsafely), a `_target_` outside the
    libraries the toolkit's own configs use, an mmengine `custom_imports` of another package."""
    import yaml  # PyYAML comes with detectron2's config stack (det folders)

    bad = []

    class Checking(yaml.SafeLoader):
        """Reads LazyConfig.save's YAML without building anything: of its Python tags, tuples, `partial` and
        names or objects of the allowed libraries pass; any other is noted (and the file refused)."""

    def python_tag(loader, suffix, node):
        allowed = suffix in ("tuple", "object/apply:functools.partial") or (
            suffix.split(":", 1)[0] in ("name", "object") and suffix.split(":", 1)[-1].startswith(TARGETS))
        if not allowed:
            bad.append(f"!!python/{suffix}")
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        return loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else suffix
    Checking.add_multi_constructor("tag:yaml.org,2002:python/", python_tag)
    try:
        obj = yaml.load(path.read_bytes(), Checking) if path.suffix == ".yaml" else reading.parse_json(  # noqa: S506
            path.read_bytes(), path.name)
    except (yaml.YAMLError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable config ({str(e).splitlines()[0]})") from None

    def walk(node):
        if isinstance(node, dict):
            t = node.get("_target_")
            if t is not None and not (isinstance(t, str) and t.startswith(TARGETS)):
                bad.append(f"_target_: {t!r}")
            imports = node.get("custom_imports")
            mods = imports.get("imports", []) if isinstance(imports, dict) else ([] if imports is None else [imports])
            bad.extend(f"custom_imports: {m!r}" for m in ([mods] if isinstance(mods, str) else mods)
                       if not (isinstance(m, str) and m.split(".")[0] in ("mae_transfer", "mmseg", "mmengine")))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(obj)
    if bad:
        raise CheckpointError(f"{path}: {bad[0]} is not something this toolkit's configs build; an export "
                              f"folder's config is refused rather than run")


def hashes(out: Path) -> dict:
    """SHA-256 of every file in the folder but the metadata and the lock."""
    return {p.name: sha256(p) for p in sorted(out.iterdir())
            if p.is_file() and not p.is_symlink() and p.name not in NOT_HASHED and not p.name.startswith(".")}


def read_meta(folder: Path, kind: Optional[str] = None) -> schemas.ExportMeta:
    """export.json through its schema (one line for any malformed variant), of the kind asked for."""
    if not (folder / META).is_file():
        raise CheckpointError(f"{folder}: no {META} (pass the folder `mae-transfer export` wrote, after its parity "
                              f"gate passed)")
    meta = reading.read_json(folder / META, schemas.ExportMeta, CheckpointError, "export metadata")
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
    if meta.config:
        check_config(folder / meta.config)
    return {name: folder / f for name, f in graphs.items()}
