"""One schema per file the toolkit reads or writes, declared once (pydantic v2); reading.py reads files through
them (`read_json("train.json", CocoInstances, DataError)`).

A file that does not fit its schema is one line naming the file, the field (`annotations[3].bbox`) and
what is wrong, raised as the caller's error type -- by construction, not by a list of cases: types are
strict (a `true` is not an id, `"5"` is not a width), numbers finite, paths relative and inside their root,
ids unique, references resolved. What the toolkit writes is built from the same classes, so what it
writes is what it can read back."""
import collections
import datetime
import math
import typing
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated

# seeds: one rule for every host (numpy's and detectron2's seeding take [0, 2**32))
SEED_MAX = 2**32 - 1
Seed = Annotated[StrictInt, Field(ge=0, le=SEED_MAX)]
Number = Union[StrictInt, StrictFloat]
Id = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=4096)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    """A file the toolkit owns: no unknown keys (a typo is an error, not ignored)."""
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    """A file a third-party tool writes (COCO): its extra keys (info, licenses, area...) pass through."""
    model_config = ConfigDict(extra="allow", strict=True)


def _finite(v: float, what: str = "value") -> float:
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number (got {v})")
    return v


def relative_path(name: str) -> str:
    """A file name inside a root folder: relative, no `..`, no drive: never a way out of the root."""
    if "\x00" in name:
        raise ValueError("a file name with a NUL character")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.anchor:
            raise ValueError(f"{name!r} is an absolute path; file names are relative to the image folder")
        if ".." in pure.parts:
            raise ValueError(f"{name!r} leads out of the image folder ('..')")
    return name


# --------------------------------------------------------------------------------------------- COCO
class CocoImage(_Open):
    id: Id
    file_name: Annotated[Name, Field(max_length=1024)]
    width: Annotated[StrictInt, Field(gt=0, le=1 << 20)]
    height: Annotated[StrictInt, Field(gt=0, le=1 << 20)]

    @field_validator("file_name")
    @classmethod
    def _inside(cls, v):
        return relative_path(v)


class Rle(_Strict):
    size: Annotated[List[Annotated[StrictInt, Field(gt=0)]], Field(min_length=2, max_length=2)]
    counts: Union[StrictStr, List[Annotated[StrictInt, Field(ge=0)]]]


Polygon = Annotated[List[Number], Field(min_length=6)]


class CocoAnnotation(_Open):
    id: Id
    image_id: Id
    category_id: Id
    bbox: Annotated[List[Number], Field(min_length=4, max_length=4)]
    segmentation: Optional[Union[List[Polygon], Rle]] = None
    iscrowd: Literal[0, 1] = 0
    area: Optional[Number] = None

    @field_validator("bbox")
    @classmethod
    def _box(cls, v):
        x, y, w, h = (_finite(float(t), "a box value") for t in v)
        if w <= 0 or h <= 0:
            raise ValueError(f"width and height must be > 0 (got {w} x {h})")
        return v

    @field_validator("segmentation")
    @classmethod
    def _polygons(cls, v):
        for poly in v if isinstance(v, list) else []:
            if len(poly) % 2:
                raise ValueError(f"a polygon of {len(poly)} numbers (x, y pairs expected)")
            for t in poly:
                _finite(float(t), "a polygon coordinate")
        return v

    @field_validator("area")
    @classmethod
    def _area(cls, v):
        return v if v is None else _finite(v, "area")


class CocoCategory(_Open):
    id: Id
    name: Name


class CocoCategories(_Open):
    """A json whose `categories` name (and number) a detector's classes: any COCO file will do."""
    categories: Annotated[List[CocoCategory], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct(self):
        _unique(self.categories, "id", "categories")
        _unique(self.categories, "name", "categories")
        return self


CLASSES_UNIQUE = "class names must be unique (per-class results are keyed by name)"


def repeated_class(names: List[str]) -> Optional[str]:
    """The first class name (in sorted order) listed more than once, or None: one rule for every class list."""
    dup = sorted(n for n, k in collections.Counter(names).items() if k > 1)
    return dup[0] if dup else None


def _unique(items, key: str, where: str) -> None:
    seen = set()
    for i, x in enumerate(items):
        v = getattr(x, key)
        if v in seen:
            raise ValueError(f"{where}[{i}].{key}: {v!r} appears more than once")
        seen.add(v)


class CocoInstances(_Open):
    """A COCO instances file: every id unique, every reference resolved, masks on all or none."""
    images: Annotated[List[CocoImage], Field(min_length=1)]  # detectron2 refuses an empty set (mid-run)
    annotations: List[CocoAnnotation]
    categories: Annotated[List[CocoCategory], Field(min_length=1)]

    @model_validator(mode="after")
    def _references(self):
        _unique(self.images, "id", "images")
        _unique(self.images, "file_name", "images")
        _unique(self.annotations, "id", "annotations")
        _unique(self.categories, "id", "categories")
        _unique(self.categories, "name", "categories")
        images, cats = {im.id for im in self.images}, {c.id for c in self.categories}
        for i, a in enumerate(self.annotations):
            if a.image_id not in images:
                raise ValueError(f"annotations[{i}].image_id: {a.image_id} is not the id of an image in 'images'")
            if a.category_id not in cats:
                raise ValueError(f"annotations[{i}].category_id: {a.category_id} is not in 'categories'")
        masks = [bool(a.segmentation) for a in self.annotations]
        if any(masks) and not all(masks):
            i = masks.index(False)
            raise ValueError(f"annotations[{i}].segmentation: {masks.count(False)} of {len(masks)} annotations have "
                             f"no mask; give every annotation a mask, or drop all masks for box-only training")
        return self

    @property
    def has_masks(self) -> bool:
        return any(a.segmentation for a in self.annotations)


# ------------------------------------------------------------------------------- the toolkit's own files
class ModelArgs(_Strict):
    """The architecture a checkpoint records: a registered name (None: the table of sizes decides) and the
    keyword arguments of MaskedAutoencoderViT / the ViT."""
    name: Optional[Name] = None
    kwargs: Dict[Annotated[StrictStr, Field(pattern=r"^[A-Za-z_]\w*$")],
                 Union[StrictBool, StrictInt, StrictFloat, StrictStr, None]] = {}

    @field_validator("kwargs")
    @classmethod
    def _sizes(cls, v):
        for k, x in v.items():
            if isinstance(x, float):
                _finite(x, k)
            if isinstance(x, int) and not isinstance(x, bool) and not 0 <= x <= 1 << 20:
                raise ValueError(f"{k}={x}: outside [0, {1 << 20}]")
        return v


class Settings(_Strict):
    """settings.json: what a resumed run must share with its first start (text; paths absolute)."""
    config: Optional[StrictStr] = None
    seed: Optional[StrictStr] = None
    model: Optional[StrictStr] = None
    backbone: Optional[StrictStr] = None
    data: Optional[StrictStr] = None
    recipe: Optional[Dict[StrictStr, StrictStr]] = None  # the recipe's values, as text (None: not recorded)


class CheckpointRef(_Strict):
    path: StrictStr
    sha256: Optional[Sha256]


Task = Literal["pretrain", "finetune", "linprobe", "det", "seg"]
TASKS = typing.get_args(Task)


class Result(_Strict):
    """result.json: one schema for every task (see results.py)."""
    task: Task
    status: Literal["ok", "failed"]
    error: Optional[StrictStr] = None
    metrics: Dict[StrictStr, Optional[Number]]
    seed: Optional[Seed]
    threads: Annotated[StrictInt, Field(ge=1)]
    world_size: Annotated[StrictInt, Field(ge=1)]
    config: Optional[StrictStr]
    checkpoint: Optional[CheckpointRef]
    output_dir: StrictStr
    argv: List[StrictStr]
    started: StrictStr
    ended: StrictStr

    @field_validator("started", "ended")
    @classmethod
    def _iso(cls, v):
        datetime.datetime.fromisoformat(v)  # ValueError: not an ISO 8601 time
        return v

    @model_validator(mode="after")
    def _consistent(self):
        for k, v in self.metrics.items():
            if v is not None:
                _finite(v, f"metric {k}")
        if self.status == "failed" and not self.error:
            raise ValueError("status failed without an error line")
        return self


GraphName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z_][\w]*$", max_length=64)]
FileName = Annotated[StrictStr, Field(pattern=r"^[\w][\w.-]*$", max_length=255)]  # a name in the folder, no path


# ------------------------------------------------------------------------------ shards (mae-transfer shards)
Count = Annotated[StrictInt, Field(ge=0)]


class ShardEntry(_Strict):
    name: FileName       # the shard, beside index.json
    samples: Count       # samples with an image: the epoch's length is known without reading a shard
    bytes: Count         # its size: an index that no longer matches its shard is not trusted
    sha256: Sha256


class ShardIndex(_Strict):
    format: Literal["mae-transfer shards"]
    version: Literal[1]
    shards: List[ShardEntry]
    classes: Optional[List[Name]] = None   # class names, by `.cls` index (from an ImageFolder)
    settings: Dict[StrictStr, Union[StrictStr, StrictInt, None]] = {}  # how they were written (resume checks)

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v):  # the rule of a classes file (reading.read_classes)
        dup = repeated_class(v or [])
        if dup is not None:
            raise ValueError(f"lists {dup!r} more than once: {CLASSES_UNIQUE}")
        return v


class HfDataFile(_Open):
    filename: Name  # an Arrow file of the dataset, relative to its folder

    @field_validator("filename")
    @classmethod
    def _inside(cls, v):
        return relative_path(v)


class HfState(_Open):
    """A datasets `save_to_disk` folder's state.json: the Arrow files that hold its rows, in order."""
    data_files: List[HfDataFile] = Field(alias="_data_files", min_length=1)


class GraphSpec(_Strict):
    inputs: Dict[StrictStr, List[Union[StrictStr, Annotated[StrictInt, Field(ge=0)]]]]
    outputs: List[StrictStr]


class ExportMeta(_Strict):
    """export.json: everything `predict --runtime` needs, every file named in the folder and hashed."""
    kind: Literal["det", "seg", "encoder"]
    config: Optional[FileName]             # the config snapshot inside the folder
    weights: FileName                      # the trained weights the Python parts use, inside the folder
    size: Annotated[StrictInt, Field(gt=0, le=1 << 16)]
    graphs: Dict[GraphName, GraphSpec]
    files: Dict[Literal["onnx", "pt2"], Dict[GraphName, FileName]]
    sha256: Dict[FileName, Sha256]
    opset: StrictInt
    torch: StrictStr
    classes: Optional[List[StrictStr]] = None
    mask_head: Optional[StrictBool] = None
    patch_size: Optional[Annotated[StrictInt, Field(gt=0, le=1 << 10)]] = None

    @model_validator(mode="after")
    def _complete(self):
        parts = {"det": ({"backbone", "rpn", "box_head"}, {"mask_head"}), "seg": ({"model"}, set()),
                 "encoder": ({"model"}, set())}[self.kind]
        if not parts[0] <= set(self.graphs) <= parts[0] | parts[1]:
            raise ValueError(f"graphs: an exported {self.kind} has the graphs {sorted(parts[0])} "
                             f"(+ {sorted(parts[1])}), not {sorted(self.graphs)}")
        if (self.kind != "encoder") != bool(self.config and self.config.endswith((".yaml", ".json"))):
            raise ValueError(f"config: {self.config!r} (a det/seg export carries its config as .yaml or .json)")
        for fmt, per in self.files.items():
            odd = [f"{g}: {f}" for g, f in per.items() if f != f"{g}.{fmt}"]
            if odd:
                raise ValueError(f"files.{fmt}: {odd[0]} (each graph is the file <graph>.{fmt})")
        named = [self.weights] + ([self.config] if self.config else [])
        named += [f for per in self.files.values() for f in per.values()]
        unhashed = [f for f in named if f not in self.sha256]
        if unhashed:
            raise ValueError(f"sha256: no hash for {unhashed[0]}")
        for fmt, per in self.files.items():
            if set(per) != set(self.graphs):
                raise ValueError(f"files.{fmt}: graphs {sorted(per)} differ from 'graphs' {sorted(self.graphs)}")
        return self


class Pt2Payload(_Strict):
    """One entry of a .pt2 archive's weights or constants config: a plain tensor file, never a pickle."""
    model_config = ConfigDict(extra="allow", strict=True)
    path_name: Annotated[StrictStr, Field(pattern=r"^(weight|tensor)_\d+$")]
    use_pickle: Literal[False]
    tensor_meta: Dict[StrictStr, Any]


class Pt2Config(_Strict):
    config: Dict[StrictStr, Pt2Payload]


# ----------------------------------------------------------------- a training run's own checkpoint-last.pth
Positive = Annotated[StrictInt, Field(ge=1, le=2**31)]
Steps = Annotated[StrictInt, Field(ge=0, le=2**62)]


class SegmentLayout(_Strict):
    world_size: Positive
    workers: Positive
    batch_size: Positive
    window: Annotated[StrictInt, Field(ge=0, le=2**31)] = 0  # a segment recorded before the window was recorded


class Segment(_Strict):
    """A part of a sharded epoch that ran with one layout (data/order.py), from image `start` of the epoch."""
    layout: SegmentLayout
    start: Steps


class TrainStateFields(_Strict):
    """engine/state.TrainState as saved: where the run stands inside its data."""
    epoch: Steps
    batch: Steps
    step: Steps
    loss_sum: Number
    n_loss: Steps
    n_bad: Steps
    rollbacks: Steps
    segments: List[Segment] = []

    @field_validator("loss_sum")
    @classmethod
    def _finite_sum(cls, v):
        return _finite(float(v), "loss_sum")


class RunArgs(_Open):
    """The recipe a checkpoint was written with (`args`: every config field); what resuming reads of it."""
    batch_size: Optional[Positive] = None


class RunCheckpoint(_Open):
    """checkpoint-last.pth's fields besides the tensors (official MAE's `epoch`, `args`; this toolkit's
    `step`, `train_state`, `world_size`, `sharded`, `scheduler`), as resuming reads them."""
    epoch: Annotated[StrictInt, Field(ge=-1, le=2**62)]
    step: Steps = 0
    train_state: Optional[TrainStateFields] = None
    args: Optional[RunArgs] = None
    world_size: Positive = 1
    sharded: Optional[Name] = None
    scheduler: Optional[Dict[StrictStr, Any]] = None

    @model_validator(mode="after")
    def _agree(self):
        st = self.train_state
        if st is not None and (self.epoch != st.epoch - 1 or self.step != st.step):
            raise ValueError(f"epoch {self.epoch} and step {self.step} disagree with train_state (epoch {st.epoch}, "
                             f"step {st.step}): the file is damaged")
        if st is not None and st.step < st.epoch:
            raise ValueError(f"train_state: epoch {st.epoch} after only {st.step} optimizer steps (every epoch "
                             f"makes at least one): the file is damaged")
        return self
