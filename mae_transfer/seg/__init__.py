"""MMSegmentation glue: MAE checkpoints into mmseg's MAE + Feature2Pyramid + UPerHead.

Importing this module makes mmseg importable on mmcv-lite (see compat.py), registers `MAEViT` and
`PerClassIoUMetric` in mmseg's registries; configs elsewhere can use them with
`custom_imports = dict(imports=['mae_transfer.seg'])`."""
from .compat import ensure_mmcv_ops

ensure_mmcv_ops()  # mmseg does not import without it; its checkpoints: compat.mmengine_checkpoints

from .backbone import MAEViT  # noqa: E402,F401
from .metric import PerClassIoUMetric  # noqa: E402,F401
