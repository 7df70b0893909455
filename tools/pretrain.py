#!/usr/bin/env python
"""`mae-transfer pretrain` (kept so the README's `python tools/pretrain.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["pretrain", *sys.argv[1:]])
