# ViT-B/16 MAE pretraining: the paper's recipe (appendix A.1), which PretrainConfig holds as defaults.
# 4096 images/step = 64 per GPU x 64 GPUs (accum_iter is derived from effective_batch_size).
# lr = 1.5e-4 * 4096 / 256 = 2.4e-3; 800 epochs, 40 warm-up; fine-tuned: 83.6 % top-1 (Table 3).
from mae_transfer.engine.pretrain import PretrainConfig

cfg = PretrainConfig(model="mae_vit_base_patch16")
