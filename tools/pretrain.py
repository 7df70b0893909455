#!/usr/bin/env python
"""`mae-transfer pretrain` (kept so the README's `python tools/pretrain.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

main(["pretrain", *sys.argv[1:]])
