#!/usr/bin/env python
"""`mae-transfer visualize` (kept so the README's `python tools/visualize.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

main(["visualize", *sys.argv[1:]])
