#!/usr/bin/env bash
# The demo, on embedded data only (nothing is downloaded), about 15 minutes on 2 CPU cores:
#   1. pretrain a tiny MAE on random crops of scikit-image's photos       (tools/pretrain.py)
#   2. ViTDet Mask R-CNN from that checkpoint on a generated COCO-format set (tools/train_det.py)
#   3. UperNet from that checkpoint on a generated ADE20K-layout set       (tools/train_seg.py)
#   4. both trained models on a few validation images, drawn              (tools/predict.py)
# Everything lands in output/demo/ (full logs: det.log, seg.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=output/demo
CKPT=$OUT/pretrain/checkpoint-last.pth

echo "== 1/4 MAE pretraining (ViT-Ti/8, 64 px) =="
$PY tools/pretrain.py output_dir=$OUT/pretrain

echo "== 2/4 detection: ViTDet Mask R-CNN on generated shapes (COCO format) =="
[ -f $OUT/coco_shapes/annotations/val.json ] || $PY -m mae_transfer.data.synthetic coco $OUT/coco_shapes 300 50 >/dev/null
$PY tools/train_det.py --backbone $CKPT --config configs/det/tiny_cpu.py --output-dir $OUT/det \
    --train-json $OUT/coco_shapes/annotations/train.json --train-images $OUT/coco_shapes/train \
    --val-json $OUT/coco_shapes/annotations/val.json --val-images $OUT/coco_shapes/val 2>&1 \
  | tee $OUT/det.log | grep --line-buffered -E "backbone |iter: [0-9]*9 |copypaste: [0-9]|Task|^error"

echo "== 3/4 segmentation: UperNet on generated shapes (ADE20K layout) =="
[ -d $OUT/ade_shapes/images/validation ] || $PY -m mae_transfer.data.synthetic ade $OUT/ade_shapes 200 40 >/dev/null
$PY tools/train_seg.py --backbone $CKPT --config configs/seg/tiny_cpu.py --data-root $OUT/ade_shapes \
    --work-dir $OUT/seg 2>&1 \
  | tee $OUT/seg.log | grep --line-buffered -E "backbone |Iter\(train\)|mIoU:|^\| [a-z]|^error"

echo "== 4/4 prediction: overlays of a few validation images =="
mkdir -p $OUT/predict_inputs/det $OUT/predict_inputs/seg
cp $(ls $OUT/coco_shapes/val/* | head -4) $OUT/predict_inputs/det/
cp $(ls $OUT/ade_shapes/images/validation/* | head -4) $OUT/predict_inputs/seg/
$PY tools/predict.py det $OUT/predict_inputs/det --config configs/det/tiny_cpu.py --weights $OUT/det/model_final.pth \
    --classes-json $OUT/coco_shapes/annotations/val.json --out $OUT/predict/det 2>&1 | grep -E "detections|^error"
$PY tools/predict.py seg $OUT/predict_inputs/seg --config configs/seg/tiny_cpu.py --weights $OUT/seg/iter_200.pth \
    --out $OUT/predict/seg 2>&1 | grep -E "images ->|^error"

echo
echo "pretraining:  $OUT/pretrain/{checkpoint-last.pth,loss_curve.png,reconstructions.png}"
echo "detection:    $OUT/det/eval_results.json    (box / mask AP)"
echo "segmentation: $OUT/seg/eval_results.json    (mIoU, per class)"
echo "predictions:  $OUT/predict/{det,seg}/*_overlay.png"
