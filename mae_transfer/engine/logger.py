"""What a run leaves behind for people: TensorBoard scalars, JSON lines (`log.txt`, the official
format: one dict per epoch), and a loss-curve PNG redrawn every epoch."""
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .. import outputs


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record is emitted (not the stream of setup time), so a
    second command in the same process -- a notebook cell, a test, redirect_stdout -- logs where it prints."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


class _RunLog(logging.FileHandler):
    """run.log: a line that cannot be written (a full disk) is said once on stderr, then the log goes on on the
    terminal only -- not a traceback per line; the write that stops the run reports itself."""

    def __init__(self, path: Path, owner: logging.Logger):
        super().__init__(path)
        self.owner = owner

    def handleError(self, record):
        err = sys.exc_info()[1]
        print(f"warning: cannot append to {self.baseFilename}: {getattr(err, 'strerror', None) or err}; "
              f"logging to the terminal only", file=sys.stderr)
        self.owner.removeHandler(self)
        self.close()


def setup_logging(output_dir: Optional[Path], is_main: bool, name: str = "mae_transfer") -> logging.Logger:
    root = logging.getLogger(name)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    root.handlers.clear()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    h = _Stdout()
    h.setFormatter(fmt)
    root.addHandler(h)
    if output_dir is not None and is_main:
        fh = _RunLog(outputs.private(Path(output_dir) / "run.log"), root)  # appended to: never through a hard link
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.propagate = False
    return root


class RunLogger:
    def __init__(self, output_dir, enabled: bool = True):
        self.dir, self.enabled = Path(output_dir), enabled
        self.tb = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                # tensorboard: an optional writer, made on the main process only
                from torch.utils.tensorboard import SummaryWriter

                if threading.excepthook is not _quiet_tensorboard_writer:
                    _quiet_tensorboard_writer.default = threading.excepthook
                    threading.excepthook = _quiet_tensorboard_writer
                self.tb = self._tb(SummaryWriter, str(self.dir / "tensorboard"))
            except ImportError:  # tensorboard is optional for the core
                self.tb = None

    def _tb(self, call, *args):
        """A TensorBoard call; the OS error of its writer (a full disk) as the one line of any other write."""
        try:
            return call(*args)
        except OSError as e:
            raise outputs.write_error(self.dir / "tensorboard", e) or e from None

    def scalars(self, values: Dict[str, float], step: int):
        if self.tb is not None:
            for k, v in values.items():
                self._tb(self.tb.add_scalar, k, v, step)

    def epoch(self, record: Dict):
        """Append one JSON line to log.txt (official format) and redraw the loss curve."""
        if not self.enabled:
            return
        outputs.append(self.dir / "log.txt", json.dumps(record) + "\n")  # never through a hard link
        if self.tb is not None:
            self._tb(self.tb.flush)
        plot_curves(self.records(), self.dir / "loss_curve.png")

    def event(self, record: Dict):
        """Something that happened outside the epoch rhythm (a rollback): one JSON line in events.jsonl."""
        if self.enabled:
            outputs.append(self.dir / "events.jsonl", json.dumps(record) + "\n")

    def records(self) -> List[Dict]:
        path = self.dir / "log.txt"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def close(self):
        if self.tb is not None:
            self._tb(self.tb.close)


def _quiet_tensorboard_writer(args) -> None:
    """threading.excepthook: the OS error of TensorBoard's writer thread (a full disk) is not printed as a
    traceback there -- the writer raises it again at its next call in the main thread, which says it in one line."""
    if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
        return
    _quiet_tensorboard_writer.default(args)


def plot_curves(records: List[Dict], path: Path, keys=("train_loss", "test_loss", "test_acc1")):
    import matplotlib  # 0.45 s of import (measured), only when a curve is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        return
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.5), squeeze=False)
    for ax, k in zip(axes[0], present):
        pts = [(r["epoch"], r[k]) for r in records if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(k.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    outputs.write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _module_of(name: str) -> str:
    """'blocks.3.attn.qkv.weight' -> 'blocks.3'; 'backbone.net.pos_embed' -> 'backbone.net'; 'head.weight' -> 'head'."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return ".".join(parts[:i + 1])
    return ".".join(parts[:max(1, min(2, len(parts) - 1))])


def lr_table(param_groups: Iterable[Dict], names: Dict[int, str], base_lr: float) -> List[Tuple[float, float, str]]:
    """(lr factor, peak lr, which modules) per distinct factor, lowest first: the layer-wise lr that
    layer decay gives (a run's logged lr is one group's, and users misread it). The factor is timm's
    `lr_scale`, or for groups built with their lr already scaled (detectron2), lr / base_lr."""
    rows: Dict[float, List[str]] = {}
    for g in param_groups:
        scale = round(g["lr_scale"] if "lr_scale" in g else g["lr"] / base_lr, 10)
        mods = rows.setdefault(scale, [])
        for p in g["params"]:
            mod = _module_of(names.get(id(p), "?"))
            if mod not in mods:
                mods.append(mod)
    return [(s, base_lr * s, ", ".join(m[:5]) + (f", ... (+{len(m) - 5})" if len(m) > 5 else ""))
            for s, m in sorted(rows.items())]


def log_lr_table(logger: logging.Logger, param_groups, model, base_lr: float) -> None:
    rows = lr_table(param_groups, {id(p): n for n, p in model.named_parameters()}, base_lr)
    if len(rows) < 2:
        return
    logger.info("layer-wise lr (peak, after warm-up; the logged lr is the largest):\n%s", "\n".join(
        f"  x{s:<10.4g} {lr:<10.3g} {mods}" for s, lr, mods in rows))
