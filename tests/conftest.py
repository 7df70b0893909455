import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

# A model small enough for fast CPU tests, in the official layout (several blocks, non-trivial heads).
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4)


@pytest.fixture
def tiny_mae():
    from mae_transfer.models import MaskedAutoencoderViT

    def make(**kw):
        torch.manual_seed(0)
        return MaskedAutoencoderViT(**{**TINY, **kw}).eval()
    return make
