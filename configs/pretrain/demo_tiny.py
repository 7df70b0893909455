# The CPU demo: ViT-Ti/8 on 64-px random crops of the photos scikit-image ships (no download).
# A few minutes on 2 cores. Same recipe as the paper, scaled down: smaller batch, short schedule,
# and a larger base lr (a 256-image batch with 1.5e-4 learns too slowly to show in minutes).
from configs.pretrain.mae_vit_base import cfg

cfg.model = "mae_vit_tiny_patch8"
cfg.img_size = 64
cfg.data_path = None          # embedded photos
cfg.demo_samples = 1024       # crops per epoch
cfg.batch_size = 64
cfg.effective_batch_size = 64
cfg.blr = 1.5e-3              # lr = 1.5e-3 * 64 / 256 = 3.75e-4
cfg.epochs = 30
cfg.warmup_epochs = 3
cfg.num_workers = 1
cfg.save_freq = 10
cfg.vis_freq = 5
cfg.output_dir = "output/demo/pretrain"
