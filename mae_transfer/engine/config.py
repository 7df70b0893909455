"""Python config files (`cfg = SomeConfig(...)`; a derived file imports its base and makes a copy
with `dataclasses.replace(base, ...)`), found by path or by name, + strict `key=value` overrides.

Like detectron2's `LazyConfig.load`, every load executes the file and the bases it imports afresh,
so loading one config never changes what the next load returns, even for a file that mutates
its base. The shipped configs live in the package (`mae_transfer/configs/<kind>/<name>.py`;
`configs/` at the top of the checkout is the same folder), so `--config mae_vit_large` works in an
installed wheel as well as in the checkout."""
import argparse
import ast
import contextlib
import copy
import dataclasses
import difflib
import importlib.util
import math
import sys
import typing
from pathlib import Path
from typing import Any, List, Mapping, Sequence

from ..errors import ConfigError  # noqa: F401  (re-exported)
from ..schemas import SEED_MAX

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
_HELPERS = {"__init__", "coco_loader_lsj"}  # files under configs/ that are parts, not configs


def config_names(kind: str) -> List[str]:
    """The shipped configs of one kind (pretrain, finetune, linprobe, det, seg)."""
    return sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.py") if p.stem not in _HELPERS)


def resolve_config(name_or_path, kind: str) -> Path:
    """A config file by path, or a shipped one by name: its full stem (`mask_rcnn_vitdet_b_100ep`) or a
    unique part of it (`vitdet_b_100ep`). Anything else is one error naming what exists."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    names = config_names(kind)
    key = p.stem if p.suffix == ".py" else str(name_or_path)
    if "/" not in str(name_or_path) and "\\" not in str(name_or_path):
        hits = [n for n in names if n == key] or [n for n in names if key in n]
        if len(hits) == 1:
            return CONFIG_ROOT / kind / f"{hits[0]}.py"
        if len(hits) > 1:
            raise ConfigError(f"config name {key!r} matches several {kind} configs: {', '.join(hits)}")
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"config not found: {name_or_path}{hint}; the {kind} configs are: {', '.join(names)}")


def load_config(path, expected_type=None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    with _fresh_modules("mae_transfer.configs"):
        spec.loader.exec_module(mod)
    if not hasattr(mod, "cfg"):
        raise ConfigError(f"{path} defines no `cfg`")
    cfg = copy.deepcopy(mod.cfg)  # nothing of the file's objects (dicts in fields included) is shared
    if expected_type is not None and not isinstance(cfg, expected_type):
        raise ConfigError(f"{path}: cfg is a {type(cfg).__name__}, expected {expected_type.__name__}")
    return cfg


@contextlib.contextmanager
def _fresh_modules(package: str):
    """Imports of `package` inside the block execute afresh; modules imported before are restored."""
    def ours(name):
        return name.startswith(package + ".")
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if ours(k)]}
    try:
        yield
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


# ------------------------------------------------------------------------------------------ overrides
def split_override(item: str):
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    return key.strip(), raw


def unknown_key(key: str, known: Sequence[str], where: str = "config") -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known)[:40])}"
    return ConfigError(f"unknown {where} key {key!r}{hint}")


def _literal(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw  # a bare string such as a path (or `{[]: 1}`, which is not a value: the type check says so)


def parse_bool(key: str, raw) -> bool:
    """Only true/false and 1/0 (any case): `Ture` is a mistake, not False."""
    s = str(raw).strip().lower()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise ConfigError(f"{key}={raw}: expected true or false (or 1/0)")


def coerce(key: str, raw: str, hint) -> Any:
    """The text of an override as a value of the field's annotated type, or a one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if type(None) in args and raw.strip().lower() in ("", "none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        hint, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    if hint is bool:
        return parse_bool(key, raw)
    value = _literal(raw)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={raw}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}={raw}: expected a finite number")
        return float(value)
    if hint is str:
        return value if isinstance(value, str) else raw
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key}={raw}: expected a tuple such as {key}=(0.9,0.95)")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={raw}: expected {len(args)} values")
            return tuple(coerce(key, repr(v), a) for v, a in zip(value, args))
        return origin(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={raw}: expected a dict such as {key}={{'depth':6}}")
    return value


def apply_overrides(cfg, overrides: List[str]):
    """`epochs=10 blr=1e-3 betas=(0.9,0.95) data_path=/x` -> a new, checked cfg; values typed by the
    field's annotation; an unknown key names the closest known one."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for item in overrides:
        key, raw = split_override(item)
        key = key.replace("-", "_")
        if key not in hints:
            raise unknown_key(key, [f.name for f in dataclasses.fields(cfg)])
        changes[key] = coerce(key, raw, hints[key])
    cfg = dataclasses.replace(cfg, **changes)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


# ------------------------------------------------------------------------------------- value checks


def check_seed(seed, where: str = "seed") -> int:
    """A seed in [0, 2**32): anything else (negative -- detectron2's "draw one at random" --, too large, not an
    integer) is one ConfigError. None (not given anywhere) is 0: every run is reproducible by default."""
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{where}={seed!r}: a seed is an integer in [0, {SEED_MAX}]")
    return seed


def seed_arg(text: str) -> int:
    """argparse type of --seed."""

    try:
        if not (text.isascii() and text.isdigit()):  # int() would take " 5", "+5", "1_000" and other scripts' digits
            raise ValueError(text)
        return check_seed(int(text), "--seed")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is an integer in [0, {SEED_MAX}]") from None
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_unique_keys(overrides: Sequence[str]) -> None:
    """A key given twice is a mistake (which one was meant?), not "the last one wins"."""
    seen = {}
    for item in overrides:
        key = split_override(item)[0].replace("-", "_")
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]} and {item}): give it once")
        seen[key] = item

def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def at_least(cfg, minimum, *names) -> None:
    for n in names:
        v = getattr(cfg, n)
        require(v is None or v >= minimum, f"{n}={v}: must be >= {minimum}")


def positive(cfg, *names) -> None:
    for n in names:
        v = getattr(cfg, n)
        require(v is None or v > 0, f"{n}={v}: must be > 0")


def one_of(cfg, name: str, choices: Sequence[str]) -> None:
    v = getattr(cfg, name)
    require(v in choices, f"{name}={v!r}: choose one of {', '.join(map(str, choices))}")


# --------------------------------------------------------------- host configs (LazyConfig, mmengine)
def check_key_path(root: Any, key: str, where: str) -> Any:
    """`a.b.0.c` must name an entry that exists in a nested dict/list config (detectron2 LazyConfig,
    mmengine Config): the hosts would otherwise add a misspelt key and train without it. Returns the
    entry's current value."""
    node, done = root, []
    for part in key.split("."):
        if isinstance(node, Mapping) or hasattr(node, "keys"):
            keys = list(node.keys())
            if part not in keys:
                raise unknown_key(".".join(done + [part]), [".".join(done + [k]) for k in map(str, keys)], where)
            node = node[part]
        elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
            if not (part.isdigit() and int(part) < len(node)):
                raise ConfigError(f"{where} key {key!r}: {'.'.join(done)} is a list of {len(node)}; "
                                  f"{part!r} is not an index in it")
            node = node[int(part)]
        else:
            raise ConfigError(f"{where} key {key!r}: {'.'.join(done)} is a value ({node!r}), not a section")
        done.append(part)
    return node


def check_value_type(key: str, old: Any, new: Any) -> None:
    """A host override must keep the kind of value it replaces (a bool stays a bool, a number a number)."""
    if old is None or new is None:
        return
    if isinstance(old, bool) != isinstance(new, bool):
        raise ConfigError(f"{key}={new!r}: expected true or false (was {old!r})")
    numeric = (int, float)
    if isinstance(old, numeric) and not isinstance(old, bool):
        if not isinstance(new, numeric):
            raise ConfigError(f"{key}={new!r}: expected a number (was {old!r})")
        if isinstance(old, int) and isinstance(new, float) and not new.is_integer():
            raise ConfigError(f"{key}={new!r}: expected an integer (was {old!r})")
        if isinstance(new, float) and not math.isfinite(new):
            raise ConfigError(f"{key}={new!r}: expected a finite number")
