#!/usr/bin/env bash
# The demo, on embedded data only (nothing is downloaded), about 18 minutes on 2 CPU cores (detection: 1,000 iterations):
#   1. Fashion-MNIST scenes (vendored items on scikit-image photos), then a tiny MAE pretrained
#      on the training scenes without their labels                      (tools/pretrain.py)
#   2. ViTDet Mask R-CNN from that checkpoint on the scenes (COCO json) (tools/train_det.py)
#   3. UperNet from that checkpoint on the scenes (index masks)         (tools/train_seg.py)
#   4. both trained models on a few validation scenes, drawn            (tools/predict.py)
# and the results beside random init with the same recipes (bench/results/cpu_suite.json).
# Everything lands in output/demo/ (full logs: det.log, seg.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=output/demo
S=$OUT/scenes
CKPT=$OUT/pretrain/checkpoint-last.pth

echo "== 1/4 Fashion-MNIST scenes, and MAE pretraining on the training scenes (ViT-Ti/8, 64-px crops) =="
[ -f $S/annotations/val.json ] || $PY -m mae_transfer.data.scenes $S --train 2000 --val 200 >/dev/null
# 12 epochs (~4 min): the benchmark's in-domain MAE had 100 (configs/pretrain/scenes_tiny.py)
$PY tools/pretrain.py --config configs/pretrain/scenes_tiny.py --data-path $S/train --output-dir $OUT/pretrain \
    epochs=12 warmup_epochs=1 save_freq=12 vis_freq=12

echo "== 2/4 detection: ViTDet Mask R-CNN on the scenes =="
$PY tools/train_det.py --backbone $CKPT --config configs/det/tiny_cpu.py --output-dir $OUT/det --seed 0 \
    --train-json $S/annotations/train.json --train-images $S/train \
    --val-json $S/annotations/val.json --val-images $S/val 2>&1 \
  | tee $OUT/det.log | grep --line-buffered -E "backbone |iter: [0-9]*9 |copypaste: [0-9]|Task|^error"

echo "== 3/4 segmentation: UperNet on the scenes (background + 10 classes) =="
$PY tools/train_seg.py --backbone $CKPT --config configs/seg/tiny_cpu.py --work-dir $OUT/seg --seed 0 \
    --train-images $S/train --train-masks $S/masks/train --val-images $S/val --val-masks $S/masks/val \
    --classes $S/classes.txt 2>&1 \
  | tee $OUT/seg.log | grep --line-buffered -E "backbone |Iter\(train\)|mIoU:|^error"

echo "== 4/4 prediction: overlays of a few validation scenes =="
mkdir -p $OUT/predict_inputs
cp $(ls $S/val/* | head -4) $OUT/predict_inputs/
$PY tools/predict.py det $OUT/predict_inputs --config configs/det/tiny_cpu.py --weights $OUT/det/model_final.pth \
    --classes-json $S/annotations/val.json --out $OUT/predict/det --score-thresh 0.3 2>&1 | grep -E "detections|^error"
# the runner's own copy of the config: it holds the class list the model was trained with
$PY tools/predict.py seg $OUT/predict_inputs --config $OUT/seg/tiny_cpu.py --weights $OUT/seg/iter_150.pth \
    --out $OUT/predict/seg 2>&1 | grep -E "images ->|^error"

echo
$PY -m mae_transfer.evaluate $OUT/det $OUT/seg bench/results/cpu_suite.json
echo
echo "pretraining:  $OUT/pretrain/{checkpoint-last.pth,loss_curve.png,reconstructions.png}"
echo "detection:    $OUT/det/eval_results.json    (box / mask AP)"
echo "segmentation: $OUT/seg/eval_results.json    (mIoU, per class)"
echo "predictions:  $OUT/predict/{det,seg}/*_overlay.png"
