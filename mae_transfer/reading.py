"""One reader per kind of text input, for every file the toolkit reads: JSON through its schema (schemas.py),
text lines, classes files.

    coco = read_json("train.json", CocoInstances, DataError)      # any malformed variant: one DataError line
    names = read_lines("classes.txt", "classes file", DataError)  # UTF-8 (BOM or not) or UTF-16 with a BOM

Every way a file can be wrong is one line naming the file, the field (`annotations[3].bbox`) and what is wrong,
raised as the caller's error type."""
import json
import re
from pathlib import Path
from typing import Any, List, Optional, Type, TypeVar

from pydantic import BaseModel, ValidationError

from . import schemas
from .errors import DataError, UserError

M = TypeVar("M", bound=BaseModel)


def _where(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(e: ValidationError) -> str:
    """The first problem of a ValidationError as `field: what is wrong (got X)`, plus how many more."""
    errs = e.errors(include_url=False)
    first = errs[0]
    where = _where(first["loc"])  # empty for a whole-file rule, whose message names its own field
    msg = re.sub(r"^Value error, ", "", first["msg"])
    plain = first["type"] in ("missing", "value_error") or "input" not in first
    got = "" if plain or not where else f" (got {_short(first['input'])})"
    more = f" (and {len(errs) - 1} more problem{'s' * (len(errs) > 2)})" if len(errs) > 1 else ""
    return f"{where + ': ' if where else ''}{msg}{got}{more}"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes, what: str) -> Any:
    """JSON from bytes in any encoding JSON allows (UTF-8, -16, -32; a BOM is fine); NaN/Infinity refused.
    ValueError says what is wrong, in one line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not text in a JSON encoding (UTF-8/16/32): {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise ValueError("nested too deeply to be a real file") from None


def _read_bytes(path: Path, what: str, error: Type[UserError]) -> bytes:
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{path}: {'a folder' if path.is_dir() else 'not a regular file'}, not a {what}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None


def read_json(path, schema: Optional[Type[M]], error: Type[UserError], what: str = "json file") -> Any:
    """A JSON file through its schema -> the validated model (or the parsed object when schema is None).
    Every way it can be wrong is one `error` naming the file and the field."""
    path = Path(path)
    try:
        obj = parse_json(_read_bytes(path, what, error), what)
    except ValueError as e:
        raise error(f"{path}: {e}") from None
    return obj if schema is None else validate(obj, schema, error, f"{path}")


def validate(obj: Any, schema: Type[M], error: Type[UserError], where: str) -> M:
    if schema is not None and issubclass(schema, BaseModel) and not isinstance(obj, dict):
        raise error(f"{where}: a JSON {type(obj).__name__}, not the object a {schema.__name__} file holds")
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise error(f"{where}: {describe(e)}") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply") from None


def decode_text(data: bytes) -> str:
    """Text in UTF-8 (a BOM is fine) or UTF-16/32 with a BOM; ValueError otherwise."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            break
    else:
        codec = "utf-8"
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise ValueError("holds NUL characters: a binary file, not text")
    return text


def read_lines(path, what: str, error: Type[UserError]) -> List[str]:
    """The non-blank lines of a text file, stripped, in any encoding `decode_text` reads."""
    path = Path(path)
    try:
        text = decode_text(_read_bytes(path, what, error))
    except ValueError as e:
        raise error(f"{path}: {e}") from None
    return [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def read_classes(path, error: Type[UserError] = None) -> List[str]:
    """A classes file: one name per line (UTF-8, or UTF-16/32 with a BOM; blank lines skipped), names unique
    (per-class results are keyed by name)."""

    error = error or DataError
    names = read_lines(path, "classes file", error)
    if not names:
        raise error(f"{path} lists no classes (one name per line)")
    dup = schemas.repeated_class(names)
    if dup is not None:
        raise error(f"{path} lists {dup!r} more than once: {schemas.CLASSES_UNIQUE}")
    return names
