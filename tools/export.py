#!/usr/bin/env python
"""`mae-transfer export` (the shim every other command has: `python tools/export.py ...`; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["export", *sys.argv[1:]])
