"""The one command grammar (after detectron2's `default_argument_parser`): every training command takes

    --config NAME|PATH   a shipped config by name (`mae-transfer <cmd> --help` lists them) or a file
    --output-dir DIR     where the run writes (checkpoints, logs, result.json)
    --seed N             seeds everything the run draws
    --resume             continue the run in --output-dir; without it a run starts fresh, and a
                         directory that already holds a run is refused instead of overwritten
    --allow-changes      with --resume: go on although seed, model or data differ from the run's own
    --eval-only CKPT     evaluate a trained checkpoint and exit
    --num-gpus N         processes on this machine (GPUs; CPU processes without one)
    key=value ...        config overrides, checked: an unknown key is an error naming the closest one

and each host receives the overrides in its own mechanism (dataclass fields, LazyConfig overrides,
mmengine cfg-options)."""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from ..engine.config import ConfigError, check_unique_keys, config_names, seed_arg, split_override
from ..outputs import LOCK_ENV
from . import ERRORS_ENV

PREFLIGHT_ENV = "MAE_TRANSFER_PREFLIGHT"  # set by a launcher for the processes it starts: inputs checked


class Parser(argparse.ArgumentParser):
    """argparse with one `error:` line for a mistake (instead of the usage block), like every other error."""

    def __init__(self, prog: str, doc: str):
        # no abbreviations: a typo such as `--output 1` must not quietly mean `--output-dir 1`
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                         allow_abbrev=False)

    def error(self, message):
        print(f"error: {self.prog}: {message} (--help lists the options)", file=sys.stderr)
        sys.exit(2)


def path(text: str) -> str:
    """An argparse type: a path that is not empty (`--output-dir ""` would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return text


def number(lo: float, hi: float = float("inf"), kind=float):
    """An argparse type: a finite number in [lo, hi] (NaN, Inf and out-of-range values are one error line)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"{text}: must be in [{lo:g}, {hi:g}]")
        return v
    parse.__name__ = kind.__name__
    return parse


def parser(prog: str, doc: str, kind: Optional[str], default_config: Optional[str] = None,
           eval_only: bool = True) -> argparse.ArgumentParser:
    """The shared options; a command adds its own (data paths, host launch flags) after them."""
    p = Parser(prog, doc)
    g = p.add_argument_group("options every training command shares")
    names = ", ".join(config_names(kind)) if kind else ""
    g.add_argument("--config", metavar="NAME|PATH",
                   help=f"a shipped config ({names}) or a config file (default: {default_config})")
    g.add_argument("--output-dir", type=path, metavar="DIR", help="where the run writes (default: the config's)")
    g.add_argument("--seed", type=seed_arg, action=Once, help="seeds model init, sampling, augmentation and masks: an "
                   "integer in [0, 2**32) (default: the config's, else 0)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last checkpoint (without it, a directory "
                        "that already holds a run is refused)")
    g.add_argument("--allow-changes", action="store_true",
                   help="with --resume: go on although seed, model or data differ from the run's first start")
    if eval_only:
        g.add_argument("--eval-only", metavar="CKPT", help="evaluate a trained checkpoint and exit")
    g.add_argument("--num-gpus", type=int, default=1, metavar="N",
                   help="processes on this machine (GPUs; CPU processes without one); 1 under torchrun")
    g.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def parse(p: argparse.ArgumentParser, argv: List[str]) -> argparse.Namespace:
    a = p.parse_intermixed_args(argv)
    check_unique_keys(a.overrides)  # `lr=1 lr=2`: which was meant? one error, not "the last wins"
    if a.num_gpus < 1:
        p.error(f"--num-gpus {a.num_gpus}: must be >= 1")
    return a


def _argv_key(command: str, argv: List[str]) -> str:
    return hashlib.sha256(json.dumps([command, list(argv)]).encode()).hexdigest()[:32]


def launcher_checked(command: str, argv: List[str]) -> bool:
    """Whether this process is one of the N that `relaunch_under_torchrun` started for this very command line,
    whose inputs (checkpoint, data) the launcher checked already: they are not checked again in every process.
    A process started any other way (alone, by the user's own torchrun) checks them itself."""
    return os.environ.get(PREFLIGHT_ENV) == _argv_key(command, argv)


def relaunch_under_torchrun(command: str, argv: List[str], num_gpus: int, locked=None) -> None:
    """`--num-gpus N` (N > 1) outside torchrun: run the same command as N torchrun processes (which share
    the lock this process holds on `locked`, its output directory, and the checks it made: `launcher_checked`),
    and exit with their status. Under torchrun (RANK set) this does nothing, so both spellings reach one code
    path."""
    if num_gpus <= 1 or "RANK" in os.environ:
        return
    rest, skip = [], False
    for i, x in enumerate(argv):  # drop --num-gpus N / --num-gpus=N
        if skip:
            skip = False
            continue
        if x == "--num-gpus":
            skip = True
            continue
        if not x.startswith("--num-gpus="):
            rest.append(x)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}",
           "-m", "mae_transfer", command, *rest]
    with tempfile.TemporaryDirectory(prefix="mae-transfer-errors-") as errors:
        # OMP_NUM_THREADS: torchrun's own default (1), given so that it does not print a banner saying so
        env = {"OMP_NUM_THREADS": "1", **os.environ, PREFLIGHT_ENV: _argv_key(command, rest), ERRORS_ENV: errors,
               **({LOCK_ENV: str(Path(locked).resolve())} if locked else {})}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
        while chunk := os.read(proc.stderr.fileno(), 1 << 16):  # as it comes (progress bars end in \r, not \n)
            if not any(Path(errors).iterdir()):  # once a process has said why it stops, torchrun's report is noise
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
        code = proc.wait()
        said = []  # (order, rank, code, line): a user's mistake, then a failure, then a bug (a peer it broke)
        for f in Path(errors).iterdir():
            c, line = f.read_text().split("\t", 1)
            said.append(((c != "2") + line.startswith("internal"), int(f.name), int(c), line))
        if said:
            _, _, code, line = min(said)
            print(line, file=sys.stderr)
    sys.exit(code)


class Once(argparse.Action):
    """An option given twice is an error, not the last one winning (`--seed 3 --seed 4`; an unquoted shard pattern
    in the `--data-path=train-{0..9}.tar` form, which the shell expands into ten options)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given:
            hint = " (quote a shard pattern: '...{000..999}.tar')" if self.dest == "data_path" else ""
            parser.error(f"{option_string} is given more than once{hint}")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def add_data_path(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--data-path", metavar="DIR", help=help_text, action=Once)


def main_process() -> bool:
    """Rank 0 of a torchrun group, or a lone process: the one that prints the closing summary."""
    return os.environ.get("RANK", "0") == "0"


def add_strategy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=("ddp", "fsdp"),
                   help="ddp: the whole model on every process; fsdp: FSDP2, each of N processes holds 1/N of "
                        "weights, gradients and optimizer state (ViT-H and beyond). Default: the config's (ddp)")


def flag_overrides(a: argparse.Namespace, names) -> List[str]:
    """`--flag value` options given on the command line as `field=value` overrides (before the
    trailing ones, which therefore win; a flag and an override of one field both given is an error)."""
    given = {k: getattr(a, k) for k in names if getattr(a, k, None) is not None}
    for item in a.overrides:
        key = split_override(item)[0].replace("-", "_")
        if key in given:
            raise ConfigError(f"{key} is given twice: as --{key.replace('_', '-')} and as {item}")
    return [f"{k}={v}" for k, v in given.items()]
