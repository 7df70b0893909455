"""detectron2 glue: MAE checkpoints into ViTDet (ViT + SimpleFeaturePyramid + Mask R-CNN).

Everything here hands weights and data to detectron2's own classes; nothing of detectron2 is
re-implemented. Importing `mae_transfer.det.backbone` registers `build_mae_vit_sfp_backbone` in
detectron2's BACKBONE_REGISTRY for yacs-config users."""
