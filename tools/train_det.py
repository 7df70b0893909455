#!/usr/bin/env python
"""`mae-transfer det` (kept so the README's `python tools/train_det.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["det", *sys.argv[1:]])
