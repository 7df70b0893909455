#!/usr/bin/env python
"""`mae-transfer submit-pretrain` (kept for `python tools/submit_pretrain.py ...`; see --help)."""
import sys

from mae_transfer.cli import main

if __name__ == "__main__":  # (detectron2 spawns workers that import this file)
    main(["submit-pretrain", *sys.argv[1:]])
