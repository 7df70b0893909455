#!/usr/bin/env python
"""`mae-transfer predict` (kept so the README's `python tools/predict.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

main(["predict", *sys.argv[1:]])
