"""mmseg's IoUMetric, plus per-class IoU/Acc written to JSON beside the log (valid JSON: `null`
for a class absent from the validation labels, whose IoU mmseg gives as NaN, or as 0 once it is
predicted somewhere)."""
from collections import OrderedDict

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from .. import outputs


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    def __init__(self, json_file: str = None, **kwargs):
        super().__init__(**kwargs)
        self.json_file = json_file

    def compute_metrics(self, results: list) -> dict:
        summary = super().compute_metrics(results)  # logs mmseg's per-class table too
        if self.json_file:
            totals = [sum(r[i] for r in results) for i in range(4)]
            per = self.total_area_to_metrics(*totals, ["mIoU"], self.nan_to_num, self.beta)
            classes = self.dataset_meta["classes"]
            present = np.asarray(totals[3]) > 0  # area_label: pixels of the class in the ground truth
            per_class = OrderedDict(
                (c, {"IoU": _pct(per["IoU"][i]) if present[i] else None,
                     "Acc": _pct(per["Acc"][i]) if present[i] else None}) for i, c in enumerate(classes))
            outputs.write_json(self.json_file, {"summary": {k: _finite(v) for k, v in summary.items()},
                                                "per_class": per_class}, indent=2)
        return summary


def _finite(x):
    x = float(x)
    return None if np.isnan(x) else x


def _pct(x) -> float:
    x = float(np.asarray(x))
    return None if np.isnan(x) else round(100 * x, 2)
