"""`mae-transfer <command>` (also `python -m mae_transfer <command>`, e.g. under torchrun): one entry point
for every tool; each command's logic lives in the package, `tools/*.py` are shims for the same calls."""
import difflib
import errno
import importlib
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import List, Optional

from ..errors import RunFailed, UserError

# command -> (module, function, one line for the overview)
COMMANDS = {
    "pretrain": ("pretrain", "pretrain", "MAE pretraining"),
    "finetune": ("finetune", "finetune", "ImageNet-style fine-tuning of an MAE encoder"),
    "linprobe": ("finetune", "linprobe", "linear probing of a frozen MAE encoder"),
    "det": ("det", "main", "ViTDet Mask R-CNN (detectron2) from an MAE checkpoint"),
    "seg": ("seg", "main", "UperNet (MMSegmentation) from an MAE checkpoint"),
    "predict": ("predict", "main", "a trained detector or segmenter on images, drawn"),
    "export": ("export", "main", "a trained model to ONNX / torch.export, checked against PyTorch"),
    "convert": ("convert", "main", "an MAE checkpoint for HF, timm, detectron2, mmseg, safetensors"),
    "visualize": ("visualize", "main", "reconstruction grid of a full MAE checkpoint"),
    "evaluate": ("evaluate", "main", "score backbones on every task, N seeds (the report card)"),
    "submit-pretrain": ("pretrain", "submit_pretrain", "pretraining on Slurm (requeued jobs resume)"),
    "shards": ("shards", "main", "a folder of images as WebDataset shards with an index"),
}

# Deprecation chatter from the host libraries' current releases, printed on every run; not actionable
# for a user of this toolkit (the pins in requirements.txt are deliberate).
for _msg in ("`torch.jit.script` is deprecated", "pkg_resources is deprecated", "torch.meshgrid: in an upcoming",
             "is_fx_tracing will return true", "Fail to import ``MultiScaleDeformableAttention``"):
    warnings.filterwarnings("ignore", message=".*" + _msg)
# The host libraries' deprecation notices (timm, mmseg, mmengine) say nothing a user of this toolkit can act on
# and would stand before the one `error:` line of a refusal; the toolkit's own warnings are logged, not warned.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*would be deprecated soon")
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # a corrupt EXIF block: the image is skipped


def usage() -> str:
    lines = ["usage: mae-transfer <command> [options] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<16} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    lines += ["", "`mae-transfer <command> --help` for its options. Training commands share --config NAME|PATH,",
              "--output-dir, --seed, --resume, --eval-only CKPT, --num-gpus N and key=value overrides."]
    return "\n".join(lines)


ERRORS_ENV = "MAE_TRANSFER_ERRORS"  # a launcher's folder where the processes it starts leave their closing line


def say_error(line: str, code: int) -> None:
    """Print a command's closing error line, or -- in a process `relaunch_under_torchrun` started -- hand it to
    the launcher, which prints one line for all the processes (not N copies and torchrun's traceback)."""
    errors, rank = os.environ.get(ERRORS_ENV), os.environ.get("RANK")
    if errors and rank is not None and Path(errors).is_dir():
        try:
            (Path(errors) / rank).write_text(f"{code}\t{line}")
            return
        except OSError:
            pass
    print(line, file=sys.stderr)


def run_cli(fn, *args):
    """Call fn(*args). A user mistake prints one `error:` line (exit 2); a run that could not finish (a
    diverging loss, a failed parity gate) one `error:` line (exit 1); anything else is a bug, printed as one
    `internal error:` line naming a log that holds the traceback (exit 1)."""

    try:
        return fn(*args)
    except RunFailed as e:
        say_error(f"error: {e}", 1)
        sys.exit(1)
    except UserError as e:
        say_error(f"error: {e}", 2)
        sys.exit(2)
    except OSError as e:  # an unwritable or missing path is the user's to fix; a full disk a failure: no traceback
        if e.errno is None:
            _internal(e)
        where = f"{e.filename}: " if e.filename else ""
        code = 1 if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO) else 2
        say_error(f"error: {where}{e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})", code)
        sys.exit(code)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        _internal(e)


def _internal(e: BaseException) -> None:
    """An unexpected exception: its traceback goes to a log file, the terminal gets one line (exit 1)."""

    log_dir = Path(os.environ.get("MAE_TRANSFER_LOG_DIR") or Path(tempfile.gettempdir()) / "mae-transfer")
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fd, log = tempfile.mkstemp(prefix=time.strftime("crash-%Y%m%d-%H%M%S-"), suffix=".log", dir=log_dir)
        with os.fdopen(fd, "w") as f:
            f.write(" ".join(sys.argv) + "\n" + text)
        where = f"traceback: {log}"
    except OSError:
        where = "traceback below"
        print(text, file=sys.stderr)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    say_error(f"internal error: {type(e).__name__}: {first} (a bug in mae-transfer or a host library; {where})", 1)
    sys.exit(1)


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
