# The CPU demo: ViT-Ti/8 on 64-px random crops of the photos scikit-image ships (no download).
# A few minutes on 2 cores. Same recipe as the paper, scaled down: smaller batch, short schedule,
# and a larger base lr (a 256-image batch with 1.5e-4 learns too slowly to show in minutes).
# A copy of the ViT-B config with other values: the base's object is never changed.
from dataclasses import replace

from mae_transfer.configs.pretrain.mae_vit_base import cfg as base

cfg = replace(
    base,
    model="mae_vit_tiny_patch8",
    img_size=64,
    data_path=None,           # embedded photos
    demo_samples=1024,        # crops per epoch
    batch_size=64,
    effective_batch_size=64,
    blr=1.5e-3,               # lr = 1.5e-3 * 64 / 256 = 3.75e-4
    epochs=30,
    warmup_epochs=3,
    num_workers=1,
    save_freq=10,
    vis_freq=5,
    output_dir="output/demo/pretrain",
)
