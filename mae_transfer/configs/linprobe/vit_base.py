# ViT-B/16 linear probing (MAE appendix A.3, Table 10): 68.0 % top-1.
# LARS, blr 0.1, wd 0, 10 warm-up epochs, 90 epochs, 16384 images/step (lr = 0.1 * 16384 / 256 = 6.4),
# head = BatchNorm1d(affine=False) + Linear (init std 0.01) on the cls token; crop + flip only.
from mae_transfer.engine.finetune import ClassifyConfig

cfg = ClassifyConfig(mode="linprobe", model="vit_base_patch16", global_pool=False, epochs=90, warmup_epochs=10,
                     blr=0.1, min_lr=0.0, weight_decay=0.0, effective_batch_size=16384, batch_size=512,
                     smoothing=0.0, mixup=0.0, cutmix=0.0, aa=None, reprob=0.0, drop_path=0.0, head_init_std=0.01,
                     output_dir="output/linprobe/vit_base")
