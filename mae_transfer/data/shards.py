"""Images from WebDataset shards and HF datasets, read forward, one shard at a time.

A source is a list of shards whose sample counts are known before the first batch (from the `index.json` that
`mae-transfer shards` writes, from parquet metadata, or by one scan of the tar headers), so every sample has a
global index: shard s, member k -> offsets[s] + k. `Shards[i]` returns that sample's image (and label) and is
meant to be asked in the order `order.ShardSampler` plans -- forward through a few shards per loader worker --
which it serves from one open stream per shard, keeping the samples it passes over (raw bytes, not decoded) for
the shuffle window to ask for. Asked out of order it is still right, only slower (the shard is read again). A
sample's content is a function of its index alone: that is what makes a resumed epoch exact.

WebDataset's convention: a sample is the consecutive members sharing a key (the member name up to the first dot
of its base name); its image is the member ending in .jpg/.jpeg/.png/.webp, its label `KEY.cls` (an integer) or
`KEY.json` ({"label": n} or {"cls": n}). Other members are ignored. HF datasets: parquet files or a `save_to_disk`
folder (Arrow files) with an image column (HF's Image feature: {bytes, path}, or raw bytes) and an optional
integer `label` column.
"""
import bisect
import io
import json
import logging
import os
import posixpath
import tarfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..errors import DataError
from .images import load_rgb
from .streams import DEFAULT_TIMEOUT, RemoteFile, Stalled, Stream, local

_logger = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
Sample = Tuple[str, Dict[str, bytes]]  # (key, {extension: bytes})


@dataclass(frozen=True)
class Shard:
    url: str    # a local path, a `pipe:` command, or any URL fsspec opens (s3://, gs://, https://)
    count: int  # samples with an image
    kind: str   # tar | parquet | arrow


# ----------------------------------------------------------------------------------------------- opening
def kind_of(url: str) -> str:
    name = url.split("?")[0].lower()
    return "parquet" if name.endswith(".parquet") else "arrow" if name.endswith(".arrow") else "tar"


def _split_name(name: str) -> Optional[Tuple[str, str]]:
    """WebDataset's (key, extension) of a member name: the key ends at the first dot of the base name."""
    folder, base = posixpath.split(name)
    if base.startswith((".", "__")) or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return posixpath.join(folder, stem), ext.lower()


def is_image(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in IMAGE_EXTS


def tar_samples(f, seekable: bool, data: bool = True) -> Iterator[Sample]:
    """The samples of a tar stream in order (with their members' bytes when `data`); samples without an image
    are left out. Raises (tarfile.TarError, EOFError, OSError) where the stream is damaged."""
    key, parts = None, {}
    with tarfile.open(fileobj=f, mode="r:" if seekable else "r|") as tf:
        for m in tf:
            split = _split_name(m.name) if m.isfile() else None
            if split is None:
                continue
            if split[0] != key:
                if any(map(is_image, parts)):
                    yield key, parts
                key, parts = split[0], {}
            wanted = is_image(split[1]) or split[1] in ("cls", "json")
            parts[split[1]] = tf.extractfile(m).read() if data and wanted else b""
    if any(map(is_image, parts)):
        yield key, parts


def _parquet(url: str, timeout: float = DEFAULT_TIMEOUT):
    import pyarrow.parquet as pq  # optional: HF sources only

    return pq.ParquetFile(url if local(url) else RemoteFile(url, timeout))


def _arrow(url: str):
    """A `save_to_disk` Arrow file's record batches, memory-mapped."""
    import pyarrow as pa  # optional: HF sources only

    return pa.ipc.open_stream(pa.memory_map(url))


def _table_samples(url: str, kind: str, start: int = 0, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Sample]:
    """Rows of a parquet or Arrow file from row `start` (whole row groups before it are not read)."""
    if kind == "parquet":
        pf = _parquet(url, timeout)
        first, groups = 0, []
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n > start or groups:
                groups.append(g)
            else:
                first += n
        batches = pf.iter_batches(batch_size=256, row_groups=groups) if groups else iter(())
    else:
        batches, first = _arrow(url), 0
    for batch in batches:
        cols = batch.to_pydict()
        image = cols.get("image", cols.get("img"))
        if image is None:
            raise DataError(f"{url}: no `image` column (columns: {', '.join(cols)})")
        labels = cols.get("label")
        for r, value in enumerate(image):
            row = first
            first += 1
            if row < start:
                continue
            value = value.get("bytes") if isinstance(value, dict) else value
            parts = {"jpg": value if isinstance(value, bytes) else b""}
            if labels is not None and labels[r] is not None:
                parts["cls"] = str(labels[r]).encode()
            yield f"{row:09d}", parts


def _check_columns(url: str, kind: str, labelled: bool, timeout: float = DEFAULT_TIMEOUT) -> None:
    import pyarrow as pa  # optional: HF sources only

    schema = _parquet(url, timeout).schema_arrow if kind == "parquet" else _arrow(url).schema
    name = "image" if "image" in schema.names else "img" if "img" in schema.names else None
    if name is None:
        raise DataError(f"{url}: no `image` column (columns: {', '.join(schema.names)})")
    t = schema.field(name).type
    if pa.types.is_struct(t):
        t = t.field("bytes").type if t.get_field_index("bytes") >= 0 else None
    if t is None or not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        raise DataError(f"{url}: the `{name}` column holds {schema.field(name).type}, not image bytes (HF's Image "
                        "feature {bytes, path} or binary)")
    if labelled and ("label" not in schema.names or not pa.types.is_integer(schema.field("label").type)):
        have = schema.field("label").type if "label" in schema.names else "none"
        raise DataError(f"{url}: fine-tuning needs an integer `label` column (found: {have})")


def count_samples(url: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Samples in one shard, read from its metadata (parquet) or headers (tar); DataError if it cannot be read
    (`Stalled` if a command or server sends nothing for `timeout` s)."""
    kind = kind_of(url)
    try:
        if kind == "parquet":
            return _parquet(url, timeout).metadata.num_rows
        if kind == "arrow":
            return sum(b.num_rows for b in _arrow(url))
        stream, n, damage = Stream(url, timeout), 0, None
        try:
            for _ in tar_samples(stream.f, stream.seekable, data=False):
                n += 1
        except (OSError, EOFError, tarfile.TarError) as e:
            damage = e
        except BaseException:  # a stall: the command is ended here, not left running
            stream.close()
            raise
        failed = stream.close()  # a `pipe:` command's own failure says more than the empty stream it left
        if failed or (damage and not n):
            raise OSError(failed or damage)
        if damage:
            _logger.warning("shard %s is damaged after %d samples (%s): those are used", url, n, damage)
        return n
    except ImportError:
        raise DataError(f"{url}: reading HF datasets needs pyarrow (pip install pyarrow)") from None
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read the shard {url}: {' '.join(str(e).split()) or type(e).__name__}") from None


# -------------------------------------------------------------------------------------------------- reader
class _Cursor:
    """One shard open for reading forward by this process; `pos` is the ordinal of the next sample."""

    def __init__(self, shard: Shard, start: int = 0, timeout: float = DEFAULT_TIMEOUT):
        self.shard, self.pos, self.stream = shard, 0, None
        if shard.kind == "tar":
            self.stream = Stream(shard.url, timeout)
            self.samples = tar_samples(self.stream.f, self.stream.seekable)
        else:
            self.samples, self.pos = _table_samples(shard.url, shard.kind, start, timeout), start

    def next(self) -> Sample:
        sample = next(self.samples)
        self.pos += 1
        return sample

    def close(self) -> Optional[str]:
        return self.stream.close() if self.stream else None


class Shards(torch.utils.data.Dataset):
    """The samples of a list of shards by global index (see the module's docstring). Returns a PIL image, or
    (image, label) when `labelled`; None for a sample that cannot be read (a damaged member, a shard that ends
    early or cannot be opened), which SeededSamples replaces and counts. `window` is the shuffle window the
    sampler plans with: up to 2x that many passed-over samples are kept (raw bytes) per open shard. `timeout`:
    seconds a piped or remote shard may send nothing before the read stops with `Stalled`.

    Each reader (a process: the main one, each loader worker) reads through streams of its own: what a process
    opened before it forked its loader workers (the first batch read for the reconstructions, say) is let go in
    each worker, never read there -- a forked file shares its position, and a command its output, between them."""

    def __init__(self, shards: List[Shard], spec: str = "", labelled: bool = False, window: int = 1000,
                 classes: Optional[List[str]] = None, timeout: float = DEFAULT_TIMEOUT):
        self.shards, self.spec, self.labelled, self.window, self.classes = shards, str(spec), labelled, window, classes
        self.timeout = timeout
        self.offsets = [0]
        for s in self.shards:
            self.offsets.append(self.offsets[-1] + s.count)
        self.__dict__.update(self._reader_state())

    @staticmethod
    def _reader_state() -> dict:
        """What one reader keeps for itself: its open shards, the samples it passed over, what it found broken."""
        return {"_pid": os.getpid(), "_open": OrderedDict(), "_kept": OrderedDict(),
                "_broken": {},  # shard -> the first sample it could not read
                "_warned": set()}

    def _own(self) -> None:
        """In a process other than the one that opened the streams (a forked loader worker): let them go, start
        afresh."""
        if self._pid != os.getpid():
            for cur in self._open.values():
                cur.close()  # this process's copies of the descriptors only (Stream.close)
            self.__dict__.update(self._reader_state())

    def __len__(self):
        return self.offsets[-1]

    def check_first(self) -> None:
        """The columns (HF) and the first sample: a source whose every sample would be unreadable, or unlabelled
        where labels are needed, is one error now rather than "50 images in a row were unreadable" later."""
        first = next(s for s in self.shards if s.count)
        tables = [s for s in self.shards if s.kind != "tar" and s.count]  # every file's columns: its footer only
        with ThreadPoolExecutor(min(16, len(tables) or 1)) as pool:
            list(pool.map(lambda s: _check_columns(s.url, s.kind, self.labelled, self.timeout), tables))
        cur = None
        try:
            cur = _Cursor(first, timeout=self.timeout)
            _, parts = cur.next()
        except Stalled:
            raise
        except Exception as e:  # noqa: BLE001  counted a moment ago, unreadable now: as a damaged shard
            raise DataError(f"cannot read the shard {first.url}: {' '.join(str(e).split()) or type(e).__name__}"
                            ) from None
        finally:
            if cur is not None:
                cur.close()
        if not next((v for k, v in parts.items() if is_image(k)), b""):
            raise DataError(f"{first.url}: its first sample has no image bytes " + (
                "(an empty KEY.jpg|jpeg|png|webp member)" if first.kind == "tar" else
                "(an HF Image column that holds only paths is not read: save the dataset with its images embedded)"))
        if self.labelled and _label(parts) is None:
            raise DataError(f"{first.url}: its first sample has no usable label (KEY.cls with a class index, "
                            "KEY.json with {\"label\": n}, or an integer `label` column); fine-tuning needs one")

    def __getstate__(self):  # open streams stay in the process that opened them (spawned loader workers)
        return {**self.__dict__, **self._reader_state(), "_pid": None}

    def locate(self, i: int) -> Tuple[int, int]:
        s = bisect.bisect_right(self.offsets, i) - 1
        return s, i - self.offsets[s]

    def __getitem__(self, i: int):
        item = self.encoded(i)
        data = item[0] if self.labelled else item
        img = load_rgb(io.BytesIO(data)) if data else None
        return ((img, item[1]) if img is not None else (None, -1)) if self.labelled else img

    def encoded(self, i: int):
        """Sample i's image bytes, undecoded (and its label when `labelled`); None (None, -1) if unreadable."""
        self._own()
        parts = self._kept.pop(i, None)
        if parts is None:
            parts = self._read(i)
        data = next((v for k, v in parts.items() if is_image(k)), b"") if parts else b""
        if not self.labelled:
            return data or None
        label = _label(parts) if parts else None
        s = self.locate(i)[0]
        if data and label is None and ("label", s) not in self._warned:
            self._warned.add(("label", s))
            _logger.warning("shard %s: sample %d has no usable label (a class index in KEY.cls, {\"label\": n} in "
                            "KEY.json): such samples are replaced and counted", self.shards[s].url, i)
        return (data, label) if data and label is not None else (None, -1)

    def _read(self, i: int) -> Optional[Dict[str, bytes]]:
        s, k = self.locate(i)
        if k >= self._broken.get(s, k + 1):
            return None
        cur = self._open.get(s)
        if cur is None or cur.pos > k:
            if cur is not None:
                cur.close()
            try:
                cur = _Cursor(self.shards[s], start=k, timeout=self.timeout)
            except Stalled:
                raise
            except Exception as e:  # noqa: BLE001  a shard that cannot be opened: its samples are unreadable
                return self._lost(s, 0, f"cannot be opened ({e})")
            self._open[s] = cur
        self._open.move_to_end(s)
        while len(self._open) > 2:  # the worker's current shard and one more (a replaced sample's)
            self._open.popitem(last=False)[1].close()
        while cur.pos <= k:
            at = self.offsets[s] + cur.pos
            try:
                _, parts = cur.next()
            except Stalled:  # the run stops (one line naming the source); the stalled command is ended
                self._open.pop(s).close()
                raise
            except StopIteration:
                return self._lost(s, cur.pos, f"ends after {cur.pos} samples; the index said {self.shards[s].count}")
            except Exception as e:  # noqa: BLE001  a truncated or corrupt tar: the rest of the shard is unreadable
                return self._lost(s, cur.pos, f"is damaged after {cur.pos} samples ({type(e).__name__}: {e})")
            if at == i:
                return parts
            self._kept[at] = parts
            while len(self._kept) > 2 * max(1, self.window):
                self._kept.popitem(last=False)
        return None

    def _lost(self, s: int, k: int, what: str) -> None:
        self._broken[s] = k
        self._warn(s, what)

    def _warn(self, s: int, what: str):
        if s not in self._warned:
            self._warned.add(s)
            failed = self._open.pop(s).close() if s in self._open else None
            _logger.warning("shard %s %s%s: its unreadable samples are replaced and counted", self.shards[s].url,
                            what, f"; {failed}" if failed else "")


def _label(parts: Dict[str, bytes]) -> Optional[int]:
    """A sample's class from `.cls` (an integer) or `.json` ({"label": n} or {"cls": n}); None if absent or bad."""
    value = None
    try:
        if "cls" in parts:
            text = parts["cls"].decode("ascii").strip()
            value = int(text) if text.isdigit() else None  # ASCII digits only: no sign, no other scripts
        elif "json" in parts:
            obj = json.loads(parts["json"])
            value = obj.get("label", obj.get("cls")) if isinstance(obj, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None
    return value if type(value) is int and 0 <= value < 2**31 else None
