# ViT-B/16 end-to-end fine-tuning on ImageNet-1K (MAE appendix A.2, Table 9): 83.6 % top-1.
# 1024 images/step = 32 per GPU x 32 GPUs; lr = 5e-4 * 1024 / 256 = 2e-3. AdamW, wd 0.05, 5 warm-up
# epochs, cosine to 1e-6, label smoothing 0.1, RandAugment m9, random erasing 0.25, mixup 0.8,
# cutmix 1.0, global pooling, head init trunc_normal(2e-5).
from mae_transfer.engine.finetune import ClassifyConfig

cfg = ClassifyConfig(model="vit_base_patch16", epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1,
                     output_dir="output/finetune/vit_base")
