"""`python -m mae_transfer.env`: versions of everything the toolkit runs on (like detectron2's collect_env)."""
import importlib
import importlib.metadata
import logging
import platform
import re
import sys
from typing import Tuple


def version_tuple(dist: str) -> Tuple[int, ...]:
    """(major, minor, patch) of an installed distribution; () when it is not installed. Compat
    code compares it with the versions it was written for (`if version_tuple("timm")[:2] == (1, 0):`)."""
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


_applied = set()


def mmengine_checkpoint_types() -> list:
    """The data types mmengine 0.10 puts in its own checkpoints besides tensors: the message hub's
    HistoryBuffer and the numpy arrays/scalars it holds; none of them can run code when loaded. [] where
    they need no allowing (torch < 2.6 does not load weights-only by default; another mmengine may differ)."""
    if version_tuple("torch") < (2, 6) or version_tuple("mmengine")[:2] != (0, 10):
        return []
    import numpy as np  # with mmengine, an optional host: only where its types need allowing
    from mmengine.logging import HistoryBuffer

    core = np._core if hasattr(np, "_core") else np.core
    types_ = [HistoryBuffer, np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    return types_ + [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]


def log_patch(what: str) -> None:
    """Say once per process that a host-library patch was applied, in the toolkit's log."""
    if what not in _applied:
        _applied.add(what)
        logging.getLogger("mae_transfer").info("compat: %s", what)


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return str(getattr(m, "__version__", None) or importlib.metadata.version(mod))
    except Exception as e:  # report, never fail
        return f"not importable ({type(e).__name__}: {str(e).splitlines()[0][:80]})"


def detectron2_build() -> str:
    try:
        import detectron2  # an optional host: reported as missing
    except ImportError:
        return "not installed"
    try:
        from detectron2 import _C  # noqa: F401
        ops = "compiled ops (_C) loaded"
    except ImportError:
        ops = "no compiled ops (pure-Python: pycocotools evaluation, no rotated boxes / deformable conv)"
    src = "sal-detectron2 0.7.2 wheel (upstream a59f0563)" if "detectron2-wheel" in detectron2.__file__ \
        else "upstream source build"
    return f"{detectron2.__version__}, {src}, {ops}"


def collect_env() -> str:
    import torch  # python -m mae_transfer.env reports even a broken torch install

    rows = [("python", sys.version.split()[0]), ("platform", platform.platform()),
            ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda}, available: {torch.cuda.is_available()})")]
    if torch.cuda.is_available():
        rows.append(("gpu", f"{torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}"))
    for mod in ("torchvision", "timm", "safetensors", "numpy", "PIL", "pycocotools", "fvcore", "iopath",
                "mmengine", "mmcv", "mmseg", "transformers", "mae_transfer"):
        rows.append((mod, _version(mod)))
    rows.append(("detectron2", detectron2_build()))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    print(collect_env())
