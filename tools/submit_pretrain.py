#!/usr/bin/env python
"""`mae-transfer submit-pretrain` (kept for `python tools/submit_pretrain.py ...`; see --help)."""
import sys

from mae_transfer.cli import main

main(["submit-pretrain", *sys.argv[1:]])
