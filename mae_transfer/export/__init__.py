"""Export to ONNX and `torch.export`, kept only where the parity gate holds (`mae-transfer export`).

    pipeline.py   export_model: graphs -> files -> the parity gate -> the folder; load_runtime, check_pt2
    graphs.py     what each kind exports (encoder, det, seg) and running a predictor on exported graphs
    det.py        ViTDet's four graphs (backbone + pyramid, RPN head, box head, mask head)
    parts.py      the pieces every kind is made of (Part, Exportable, TupleOut, image_part)
    parity.py     the gate: exported outputs against PyTorch's, per runtime
    folder.py     the folder: snapshots of the config and weights, export.json, hashes
"""
from .graphs import KINDS  # noqa: F401
from .parity import ParityError  # noqa: F401
from .pipeline import FORMATS, RUNTIMES, check_pt2, end_to_end, export_model, exported, load_runtime, trace, write  # noqa: F401
