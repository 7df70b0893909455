#!/usr/bin/env bash
# The demo, on embedded data only (nothing is downloaded), about 15 minutes on 2 CPU cores:
#   1. pretrain a tiny MAE on random crops of scikit-image's photos       (tools/pretrain.py)
#   2. ViTDet Mask R-CNN from that checkpoint on a generated COCO-format set (tools/train_det.py)
#   3. UperNet from that checkpoint on a generated ADE20K-layout set       (tools/train_seg.py)
# Everything lands in output/demo/ (full logs: det.log, seg.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=output/demo
CKPT=$OUT/pretrain/checkpoint-last.pth

echo "== 1/3 MAE pretraining (ViT-Ti/8, 64 px) =="
$PY tools/pretrain.py output_dir=$OUT/pretrain

echo "== 2/3 detection: ViTDet Mask R-CNN on generated shapes (COCO format) =="
[ -f $OUT/coco_shapes/annotations/val.json ] || $PY -m mae_transfer.data.synthetic coco $OUT/coco_shapes 300 50 >/dev/null
$PY tools/train_det.py --backbone $CKPT --config configs/det/tiny_cpu.py --output-dir $OUT/det \
    --train-json $OUT/coco_shapes/annotations/train.json --train-images $OUT/coco_shapes/train \
    --val-json $OUT/coco_shapes/annotations/val.json --val-images $OUT/coco_shapes/val 2>&1 \
  | tee $OUT/det.log | grep --line-buffered -E "backbone |iter: [0-9]*9 |copypaste: [0-9]|Task|^error"

echo "== 3/3 segmentation: UperNet on generated shapes (ADE20K layout) =="
[ -d $OUT/ade_shapes/images/validation ] || $PY -m mae_transfer.data.synthetic ade $OUT/ade_shapes 200 40 >/dev/null
$PY tools/train_seg.py --backbone $CKPT --config configs/seg/tiny_cpu.py --data-root $OUT/ade_shapes \
    --work-dir $OUT/seg 2>&1 \
  | tee $OUT/seg.log | grep --line-buffered -E "backbone |Iter\(train\)|mIoU:|^\| [a-z]|^error"

echo
echo "pretraining:  $OUT/pretrain/{checkpoint-last.pth,loss_curve.png,reconstructions.png}"
echo "detection:    $OUT/det/eval_results.json    (box / mask AP)"
echo "segmentation: $OUT/seg/eval_results.json    (mIoU, per class)"
