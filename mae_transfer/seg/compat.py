"""Make MMSegmentation 1.2.2 import and resume on mmcv-lite + torch >= 2.6. A no-op where a full
mmcv (with compiled ops) is installed. Each patch checks the versions it was written for (mmcv-lite
2.1, mmengine 0.10, torch >= 2.6) and says in the log when it is applied.

1. mmseg imports `mmcv.ops` eagerly in four modules (utils/mask_classification.py,
   models/utils/point_sample.py, decode_heads/san_head.py, losses/focal_loss.py), but mmcv-lite
   has no compiled `mmcv._ext`, so `import mmseg.models` fails. We register an `mmcv.ops` package
   whose submodules still load from mmcv's own sources, and expose the pure-torch `point_sample`
   from `mmcv/ops/point_sample.py`; `sigmoid_focal_loss` (compiled-only) raises a clear error if
   a config actually uses it. Nothing on the MAE -> UperNet -> CE -> mIoU path needs a compiled op.
2. mmengine 0.10.7 loads checkpoints with `torch.load` defaults, i.e. `weights_only=True` on
   torch >= 2.6, which refuses the `HistoryBuffer` and numpy scalars that mmengine itself saves
   (message hub). We allow exactly those types around the runner; safe loading stays on.
"""
import importlib
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path

from ..checkpoints import allowing
from ..env import log_patch, mmengine_checkpoint_types, version_tuple


def _compiled_only(name):
    def op(*args, **kwargs):
        raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops (install full mmcv, not mmcv-lite)")
    op.__name__ = name
    return op


def ensure_mmcv_ops() -> None:
    """Needed to import mmseg at all, so applied when mae_transfer.seg is imported."""
    try:
        import mmcv.ops  # noqa: F401  (full mmcv: nothing to do)
        return
    except ImportError:
        pass
    if version_tuple("mmcv-lite")[:2] != (2, 1):
        raise ImportError(f"mmcv.ops is missing and the mmcv-lite stand-in was written for mmcv-lite 2.1 "
                          f"(installed: {version_tuple('mmcv-lite') or 'none'}); run tools/setup.sh")
    for k in [k for k in sys.modules if k.startswith("mmcv.ops.")]:
        del sys.modules[k]  # half-imported submodules of the failed attempt
    spec = importlib.util.find_spec("mmcv")
    ops = types.ModuleType("mmcv.ops")
    ops.__path__ = [str(Path(spec.origin).parent / "ops")]  # submodules load from mmcv's sources
    ops.__doc__ = "mmcv-lite stand-in registered by mae_transfer.seg.compat"
    sys.modules["mmcv.ops"] = ops
    import mmcv  # only after the mmcv.ops stand-in above is in place

    mmcv.ops = ops
    ops.point_sample = importlib.import_module("mmcv.ops.point_sample").point_sample  # pure torch
    for name in ("sigmoid_focal_loss", "softmax_focal_loss", "CrissCrossAttention", "PSAMask"):
        setattr(ops, name, _compiled_only(name))
    log_patch("mmcv-lite 2.1 has no mmcv.ops: a stand-in loads its pure-torch parts (point_sample)")


@contextmanager
def mmengine_checkpoints():
    """Around mmengine's own saves and loads (the seg runner, mmseg's init_model): mmengine 0.10 loads
    with torch's defaults, i.e. weights-only on torch >= 2.6, which refuses the types above -- they are
    allowed within this block only, not process-wide. A HistoryBuffer also pickles its class's registry of
    statistics functions, which would need `getattr` on load (not a type: it could reach anything); that
    registry lives on the class anyway, so it is left out when saving within the block. Checkpoints written
    by a stock mmengine still carry it and are refused by torch."""
    types_ = mmengine_checkpoint_types()
    if not types_:
        yield
        return
    # after mmcv's compat is in place (this module runs before mmseg imports)
    from mmengine.logging import HistoryBuffer


    def _getstate(self):
        return {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}
    before = HistoryBuffer.__dict__.get("__getstate__")
    HistoryBuffer.__getstate__ = _getstate
    log_patch("mmengine 0.10 checkpoints on torch >= 2.6: HistoryBuffer and numpy types allowed for weights_only "
              "loading around the runner; HistoryBuffer pickles without its statistics registry")
    try:
        with allowing(types_):
            yield
    finally:
        if before is None:
            del HistoryBuffer.__getstate__
        else:
            HistoryBuffer.__getstate__ = before


def cpu_distributed(cfg) -> None:
    """mmengine 0.10.7 calls torch.cuda.set_device() while initialising `--launcher pytorch` and
    hands DDP `device_ids=[LOCAL_RANK]`, so multi-process training on CPUs (gloo) fails. Initialise
    the gloo group first (mmengine then skips its own) and wrap with DDP without device ids."""
    if version_tuple("mmengine")[:2] != (0, 10):
        return
    import torch.distributed as dist  # only for the mmengine 0.10 CPU patch
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    if "CPUDistributedDataParallel" not in MODEL_WRAPPERS:
        @MODEL_WRAPPERS.register_module()
        class CPUDistributedDataParallel(MMDistributedDataParallel):
            def __init__(self, module, device_ids=None, **kwargs):
                super().__init__(module=module, device_ids=None, **kwargs)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    cfg.model_wrapper_cfg = dict(type="CPUDistributedDataParallel", broadcast_buffers=False,
                                 find_unused_parameters=cfg.get("find_unused_parameters", False))
    log_patch("mmengine 0.10 --launcher pytorch on CPUs: gloo group and DDP without device ids")
