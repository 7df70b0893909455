"""`mae-transfer shards`: a folder of images as WebDataset shards with an index."""
from typing import List

from ..data.write_shards import write_shards
from ..engine.config import seed_arg
from .common import Once, Parser, number, path

SHARDS_DOC = """Write a folder of images (an ImageFolder tree: labels as KEY.cls; or a flat folder) as WebDataset
shards with an index.json (samples, bytes and SHA-256 per shard), which pretrain / finetune / linprobe read:

  mae-transfer shards data/imagenet/train shards/in1k-train --shard-size 1000
  mae-transfer pretrain --data-path 'shards/in1k-train/shard-{000000..001281}.tar'   # or the folder itself
  mae-transfer shards photos/ shards/small --max-side 512 --quality 90    # re-encoded: smaller, faster to decode

Samples are shuffled (--seed) across shards. Killed, the same command again finishes the missing shards.
"""


def main(argv: List[str], prog: str = "mae-transfer shards"):
    p = Parser(prog, SHARDS_DOC)
    p.add_argument("src", type=path, help="folder of images")
    p.add_argument("out", type=path, help="new folder for the shards")
    p.add_argument("--shard-size", type=number(1, 10**7, int), default=1000, help="samples per shard (1000)")
    p.add_argument("--max-side", type=number(8, 65536, int), help="re-encode as JPEG, longer side at most this")
    p.add_argument("--quality", type=number(1, 100, int), help="JPEG quality when re-encoding (90)")
    p.add_argument("--workers", type=number(0, 1024, int), default=0, help="processes (0: one per core)")
    p.add_argument("--seed", type=seed_arg, default=0, action=Once, help="the shuffle across shards")
    a = p.parse_args(argv)
    if a.quality is not None and a.max_side is None:
        p.error("--quality applies when re-encoding: give --max-side too")
    r = write_shards(a.src, a.out, a.shard_size, a.max_side, a.quality or 90, a.workers, a.seed)
    skipped = f"; {r['skipped']} unreadable images left out" if r["skipped"] else ""
    labels = f", {r['classes']} classes (.cls)" if r["classes"] else ""
    print(f"wrote {r['samples']} samples{labels} in {r['shards']} shards ({r['bytes'] / 2**20:.1f} MiB) to "
          f"{r['out']}{skipped}\n  --data-path '{r['pattern']}'  (or the folder)")
    return r
