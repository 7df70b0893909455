"""Seeded blocks that leave the process's global generators as they were.

The host libraries draw from the global generators: torchvision's transforms and timm's drop path from
torch's, timm's RandAugment and RandomErasing from `random`, Mixup from numpy's. The toolkit makes those
draws reproducible -- each sample from its own seed, each micro-batch from (seed, epoch, batch, rank) --
by seeding them inside a block and putting every state back when it ends: nothing outside the block, in
this library or in the user's code around it, sees a generator it did not set itself.

Every seed the toolkit uses is derived by `derive_seed` from its parts -- (purpose, seed, epoch, index, ...) --
through a cryptographic hash, so any run seed in [0, 2**32) (`schemas.SEED_MAX`) and any index gives a seed
in torch's, numpy's and `random`'s range, and two different part lists collide with probability 2**-63 (no
arithmetic mixing that overflows or repeats once an epoch passes some size)."""
import contextlib
import hashlib
import random
from typing import Iterator

import numpy as np
import torch


def derive_seed(purpose: str, *parts: int) -> int:
    """A 63-bit seed from a purpose (`"sample"`, `"micro_batch"`, ...: seeds of different uses never coincide)
    and non-negative integer parts below 2**128, each encoded at a fixed width (no two lists encode alike)."""
    if not 0 < len(purpose.encode()) <= 16:
        raise ValueError(f"derive_seed: a purpose is 1 to 16 bytes (got {purpose!r})")
    data = bytearray()
    for x in parts:
        if isinstance(x, bool) or int(x) != x or not 0 <= x < 2**128:
            raise ValueError(f"derive_seed: a part is a non-negative integer below 2**128 (got {x!r})")
        data += int(x).to_bytes(16, "little")
    digest = hashlib.blake2b(bytes(data), digest_size=8, person=purpose.encode()).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, python_numpy: bool = True) -> Iterator[None]:
    """Run the block with torch's CPU generator (and the current CUDA device's) seeded from `seed` -- and
    `random` and numpy's with `python_numpy` (~0.1 ms more: leave it off where nothing draws from them) --
    and restore their states afterwards."""
    cpu = torch.default_generator
    states = [cpu.get_state()]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        states.append(torch.cuda.get_rng_state())
    if python_numpy:
        py, npy = random.getstate(), np.random.get_state()
    cpu.manual_seed(seed)
    if cuda:
        torch.cuda.manual_seed(seed)  # the current device only
    if python_numpy:
        random.seed(seed)
        np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        cpu.set_state(states[0])
        if cuda:
            torch.cuda.set_rng_state(states[1])
        if python_numpy:
            random.setstate(py)
            np.random.set_state(npy)
