# ViT-L/16 (MAE paper Table 5: 53.6 mIoU). mmseg ships no ViT-L MAE config; the paper used the
# ViT-B recipe with features from blocks 7, 11, 15, 23.
_base_ = ["./mae_vit_base_upernet_160k_ade20k.py"]

model = dict(
    backbone=dict(embed_dims=1024, num_layers=24, num_heads=16, out_indices=[7, 11, 15, 23]),
    neck=dict(embed_dim=1024),
    decode_head=dict(in_channels=[1024] * 4, channels=1024),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.65))
work_dir = "output/seg/mae_vit_large_upernet_160k_ade20k"
