#!/usr/bin/env python
"""`mae-transfer seg` (kept so the README's `python tools/train_seg.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["seg", *sys.argv[1:]])
