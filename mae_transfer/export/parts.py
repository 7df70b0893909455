"""The pieces every exported model is made of: a `Part` (one graph: its eager module, example inputs, dynamic
dimensions, names), an `Exportable` (a kind's parts with its predictor), and the two helpers that make a
module exportable (`TupleOut`, `image_part`). A leaf: `graphs.py` (what each kind exports) and `det.py`
(ViTDet's four graphs) both build on it."""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

Graph = Callable[..., List[torch.Tensor]]  # every runtime: *inputs -> the part's outputs, in order


@dataclass
class Part:
    """One exported graph: its eager module (*inputs -> tuple of outputs), example inputs for tracing, the
    dynamic dimensions of each input, names of the inputs and outputs (the ONNX names), and the parity
    row of each output (outputs sharing a row are checked together)."""
    module: torch.nn.Module
    inputs: tuple
    dynamic: list
    input_names: List[str]
    outputs: List[str]
    rows: Optional[List[str]] = None

    def __post_init__(self):
        self.rows = self.rows or list(self.outputs)

    def shapes(self) -> Dict[str, list]:
        """input name -> its shape, a dynamic dimension by its name: {"x": ["batch", 3, 1024, 1024]}."""
        return {n: [dyn[i].__name__ if i in dyn else d for i, d in enumerate(x.shape)]
                for n, x, dyn in zip(self.input_names, self.inputs, self.dynamic)}


@dataclass
class Exportable:
    kind: str
    parts: Dict[str, Part]  # file stem -> graph: "model" (encoder, seg) or det's four
    size: int
    predictor: object = None  # DetPredictor / SegPredictor (det, seg)
    meta: dict = field(default_factory=dict)  # what `predict --runtime` needs besides the graphs

    @property
    def rows(self) -> List[str]:
        return list(dict.fromkeys(r for p in self.parts.values() for r in p.rows))


class TupleOut(torch.nn.Module):
    """A module whose forward returns its outputs as a tuple (exporters want a flat output)."""

    def __init__(self, fn: Callable, names: Sequence[str], **modules):
        super().__init__()
        self.fn, self.names = fn, list(names)
        for k, m in modules.items():
            self.add_module(k, m)

    def forward(self, *xs):
        out = self.fn(*xs)
        return tuple(out[k] for k in self.names) if isinstance(out, dict) else (out,)


def image_part(module: torch.nn.Module, size: int, outputs: List[str]) -> Part:
    """A graph of one input, x: [batch, 3, size, size]."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return Part(module, (x,), [{0: torch.export.Dim("batch", min=1, max=1024)}], ["x"], outputs)
