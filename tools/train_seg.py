#!/usr/bin/env python
"""`mae-transfer seg` (kept so the README's `python tools/train_seg.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

main(["seg", *sys.argv[1:]])
