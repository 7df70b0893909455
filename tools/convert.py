#!/usr/bin/env python
"""`mae-transfer convert` (kept so the README's `python tools/convert.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["convert", *sys.argv[1:]])
