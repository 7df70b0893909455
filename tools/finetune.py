#!/usr/bin/env python
"""`mae-transfer finetune` (kept so the README's `python tools/finetune.py ...` commands work; see --help)."""
import sys

from mae_transfer.cli import main

main(["finetune", *sys.argv[1:]])
