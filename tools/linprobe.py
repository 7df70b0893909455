#!/usr/bin/env python
"""`mae-transfer linprobe` (kept so the README's `python tools/linprobe.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["linprobe", *sys.argv[1:]])
