"""The order of a sharded epoch, and the exact place a stopped one resumes from.

Epoch e of a shard source (`shards.Shards`) is planned from (seed, e) and the run's layout -- processes R, loader
workers W, batch B, shuffle window -- on sample indices alone, before anything is read:

    sequence   the shards in a permutation of (seed, e), each shard's samples in order
    rank r     the contiguous block r of that sequence, N // R samples (the remainder rule: the last N mod R samples
               of the epoch's sequence wait for the next epoch, whose shard order differs; so do a rank's last
               samples that do not fill a batch)
    worker w   a contiguous run of whole batches of the block, shuffled within a window of `window` samples
               (WebDataset's buffer shuffle, simulated on indices with a generator of (seed, e, segment, r, w))
    batches    taken from the workers' runs in turn, as the DataLoader hands batch i to worker i mod W: each worker
               reads its own few shards forward, keeping at most `window` passed-over samples

Each sample's crop, flip and mask come from (seed, e, its index) as for a folder, so the batches of an epoch
depend on (seed, e, R, W, B, window) only. A checkpoint keeps the position as images seen plus the epoch's `segments`
(the layout each part of the epoch ran with and where it started). Resumed with the same layout, the sampler skips
what was consumed (the shard reader passes over it without decoding): the run is bit-identical to one never
stopped. Resumed with another layout, the samples the earlier segments consumed are worked out by planning them
again, and the rest of the epoch is planned anew for the new layout: every sample still once per epoch."""
from typing import List, Optional

import numpy as np
import torch

from ..rng import derive_seed


def window_shuffle(ids: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """`ids` in the order a buffer of `window` samples emits them (fill it; then emit a random one and put the next
    in its place; at the end, empty it in random order). The t-th emitted was among the first window + t read."""
    if window <= 1 or len(ids) <= 1:
        return ids
    buf = list(ids[:window])
    out = np.empty_like(ids)
    for t, (x, j) in enumerate(zip(ids[window:], rng.integers(0, len(buf), size=max(0, len(ids) - window)))):
        out[t] = buf[j]
        buf[j] = x
    rest = np.array(buf, dtype=ids.dtype)
    out[len(ids) - len(rest):] = rest[rng.permutation(len(rest))]
    return out


class ShardSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) pairs in the planned order (see the module's docstring); EpochSampler's interface."""

    def __init__(self, source, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, batch_size: int = 1, num_workers: int = 0):
        self.counts = np.array([s.count for s in source.shards], dtype=np.int64)
        self.offsets = np.asarray(source.offsets[:-1], dtype=np.int64)
        self.n, self.window = int(self.counts.sum()), (source.window if shuffle else 0)
        self.R, self.rank, self.shuffle, self.seed, self.drop_last = num_replicas, rank, shuffle, seed, drop_last
        self.B, self.W = batch_size, max(1, num_workers)
        self.epoch, self.start, self.segments = 0, 0, []

    def layout(self) -> dict:
        return {"world_size": self.R, "workers": self.W, "batch_size": self.B, "window": self.window}

    def set_epoch(self, epoch: int, start: int = 0, segments: Optional[List[dict]] = None) -> List[dict]:
        """Epoch `epoch` from this process's sample `start`, given the epoch's earlier `segments` (from the
        checkpoint); returns the segments to keep in the next checkpoint."""
        # a segment recorded before the window was part of the layout ran with this one
        segments = [{**g, "layout": {"window": self.window, **g["layout"]}} for g in segments or []] if start else []
        if start and not segments:  # a position without segments: it ran with this layout from the start
            segments = [{"layout": self.layout(), "start": 0}]
        if not segments or segments[-1]["layout"] != self.layout():
            segments.append({"layout": self.layout(), "start": start * self.R})
        self.epoch, self.start, self.segments = epoch, start, segments
        return segments

    def full_length(self) -> int:
        return self.n // self.R if self.drop_last else len(self._bounds(self.n, self.R, self.rank))

    def __len__(self):
        return self.full_length() - self.start

    def __iter__(self):
        segments = self.segments or [{"layout": self.layout(), "start": 0}]  # set_epoch not called: epoch 0
        seq = self._sequence()
        taken = np.zeros(self.n, dtype=bool)
        for j, (seg, nxt) in enumerate(zip(segments[:-1], segments[1:])):
            lay = seg["layout"]
            rest = seq[~taken[seq]]
            per_rank = (nxt["start"] - seg["start"]) // lay["world_size"]
            for r in range(lay["world_size"]):
                taken[self._rank_order(rest, j, r, lay, seg["start"])[:per_rank]] = True
        j, seg = len(segments) - 1, segments[-1]
        rest = seq[~taken[seq]] if j else seq
        order = self._rank_order(rest, j, self.rank, self.layout(), seg["start"])
        for i in order[self.start - seg["start"] // self.R:]:
            yield self.epoch, int(i)

    # ------------------------------------------------------------------------------------------------ plan
    def _sequence(self) -> np.ndarray:
        """The epoch's samples: shards in the order of (seed, epoch), each shard's in order."""
        rng = np.random.default_rng(derive_seed("shard_order", self.seed, self.epoch))
        perm = rng.permutation(len(self.counts)) if self.shuffle else np.arange(len(self.counts))
        return np.concatenate([np.arange(self.offsets[s], self.offsets[s] + self.counts[s]) for s in perm])

    @staticmethod
    def _bounds(n: int, parts: int, k: int) -> range:
        return range(n * k // parts, n * (k + 1) // parts)

    def _rank_order(self, rest: np.ndarray, segment: int, r: int, lay: dict, start: int) -> np.ndarray:
        """Rank r's samples of a segment that starts `start` images into the epoch, in the order they are loaded."""
        R, W, B = lay["world_size"], lay["workers"], lay["batch_size"]
        if self.drop_last:
            m = self.n // R - start // R
            block = rest[r * m:(r + 1) * m]
        else:
            b = self._bounds(len(rest), R, r)
            block = rest[b.start:b.stop]
        n_batches = len(block) // B
        runs = []
        for w in range(W):
            b = self._bounds(n_batches, W, w)
            rng = np.random.default_rng(derive_seed("window", self.seed, self.epoch, segment, r, w))
            runs.append(window_shuffle(block[b.start * B:b.stop * B], lay["window"], rng).reshape(-1, B))
        batches = [run[i] for i in range(max(len(run) for run in runs)) for run in runs if i < len(run)]
        return np.concatenate(batches + [block[n_batches * B:]])
