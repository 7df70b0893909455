"""`mae-transfer <command>` (also `python -m mae_transfer <command>`, e.g. under torchrun): one entry point
for every tool; each command's logic lives in the package, `tools/*.py` are shims for the same calls."""
import difflib
import importlib
import sys
import warnings
from typing import List, Optional

# command -> (module, function, one line for the overview)
COMMANDS = {
    "pretrain": ("recipes", "pretrain", "MAE pretraining"),
    "finetune": ("recipes", "finetune", "ImageNet-style fine-tuning of an MAE encoder"),
    "linprobe": ("recipes", "linprobe", "linear probing of a frozen MAE encoder"),
    "det": ("det", "main", "ViTDet Mask R-CNN (detectron2) from an MAE checkpoint"),
    "seg": ("seg", "main", "UperNet (MMSegmentation) from an MAE checkpoint"),
    "predict": ("tools", "predict", "a trained detector or segmenter on images, drawn"),
    "export": ("export", "main", "a trained model to ONNX / torch.export, checked against PyTorch"),
    "convert": ("tools", "convert", "an MAE checkpoint for HF, timm, detectron2, mmseg, safetensors"),
    "visualize": ("tools", "visualize", "reconstruction grid of a full MAE checkpoint"),
    "evaluate": ("evaluate", "main", "score backbones on every task, N seeds (the report card)"),
    "submit-pretrain": ("recipes", "submit_pretrain", "pretraining on Slurm (requeued jobs resume)"),
}

# Deprecation chatter from the host libraries' current releases, printed on every run; not actionable
# for a user of this toolkit (the pins in requirements.txt are deliberate).
for _msg in ("`torch.jit.script` is deprecated", "pkg_resources is deprecated", "torch.meshgrid: in an upcoming",
             "is_fx_tracing will return true", "Fail to import ``MultiScaleDeformableAttention``"):
    warnings.filterwarnings("ignore", message=".*" + _msg)


def usage() -> str:
    lines = ["usage: mae-transfer <command> [options] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<16} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    lines += ["", "`mae-transfer <command> --help` for its options. Training commands share --config NAME|PATH,",
              "--output-dir, --seed, --resume, --eval-only CKPT, --num-gpus N and key=value overrides."]
    return "\n".join(lines)


def run_cli(fn, *args):
    """Call fn(*args); a user mistake prints one `error:` line (exit 2) instead of a traceback."""
    from ..checkpoints import CheckpointError
    from ..data import DataError
    from ..engine.config import ConfigError
    from ..engine.loop import NonFiniteLoss
    from ..export.parity import ParityError
    from ..models import UnknownModel

    try:
        return fn(*args)
    except (NonFiniteLoss, ParityError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (CheckpointError, DataError, ConfigError, UnknownModel) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # an unwritable, full or missing path is the user's to fix, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        sys.exit(130)


def command(name: str):
    """The function behind `mae-transfer NAME` (argv -> result)."""
    module, fn, _ = COMMANDS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)


def main(argv: Optional[List[str]] = None, prog: str = "mae-transfer") -> None:
    """The console script (`sys.exit(main())`: returns None, exit status 0; errors exit 2). To get a
    command's result in Python, call `command(name)(argv)`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"error: unknown command {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
              + f"; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    run_cli(command(name), argv[1:], f"{prog} {name}")
