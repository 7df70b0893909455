"""Python config files (`cfg = SomeConfig(...)`; a derived file imports its base and makes a copy
with `dataclasses.replace(base, ...)`) + `key=value` overrides.

Like detectron2's `LazyConfig.load`, every load executes the file and the bases it imports afresh,
so loading one config never changes what the next load returns, even for a file that mutates
its base."""
import ast
import contextlib
import copy
import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any, List


class ConfigError(ValueError):
    pass


def load_config(path, expected_type=None) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    root = Path(__file__).resolve().parents[2]  # so configs can `from configs.pretrain.x import cfg`
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    with _fresh_modules("configs"):
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
        return name == package or name.startswith(package + ".")
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if ours(k)]}
    try:
        yield
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def apply_overrides(cfg, overrides: List[str]):
    """`epochs=10 blr=1e-3 betas=(0.9,0.95) data_path=/x` -> a new cfg, values typed by the field."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}; known: {', '.join(sorted(fields))}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare string such as a path
        current = getattr(cfg, key)
        if isinstance(current, bool) and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)
