#!/usr/bin/env python
"""`mae-transfer evaluate` (kept so the README's `python tools/evaluate_backbone.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["evaluate", *sys.argv[1:]])
