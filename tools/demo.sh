#!/usr/bin/env bash
# The demo, on embedded data only (nothing is downloaded), 20-40 minutes on 2 CPU cores (20.2 min measured
# 2026-12-02 on an idle 2-core Intel Xeon: scenes + pretraining 3, detection 12.5, segmentation 4, prediction 0.5 min;
# 33.8 min the same evening on the same shared machine when its host was slower: detection 1.16 s/iter instead
# of 0.75, segmentation 2.9 instead of 1.6; 38.8 min on 2026-12-03 from a fresh clone: pretraining 4.3,
# detection 25 at 1.34 s/iter, segmentation 8.3; each time the same numbers, 4.5 box / 4.0 mask AP, 9.1 mIoU):
#   1. Fashion-MNIST scenes (vendored items on scikit-image photos), then a tiny MAE pretrained
#      on the training scenes without their labels                      (mae-transfer pretrain)
#   2. ViTDet Mask R-CNN from that checkpoint on the scenes (COCO json) (mae-transfer det)
#   3. UperNet from that checkpoint on the scenes (index masks)         (mae-transfer seg)
#   4. both trained models on a few validation scenes, drawn            (mae-transfer predict)
# A second run continues (--resume) and skips what finished; `rm -r output/demo` starts afresh.
# and the results beside random init with the same recipes (bench/results/cpu_suite.json).
# Everything lands in output/demo/ (full logs: det.log, seg.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MT=.venv/bin/mae-transfer   # = python -m mae_transfer
OUT=output/demo
S=$OUT/scenes
CKPT=$OUT/pretrain/checkpoint-last.pth

echo "== 1/4 Fashion-MNIST scenes, and MAE pretraining on the training scenes (ViT-Ti/8, 64-px crops) =="
[ -f $S/annotations/val.json ] || $PY -m mae_transfer.data.scenes $S --train 2000 --val 200 >/dev/null
# 12 epochs (~4 min): the benchmark's in-domain MAE had 100 (configs/pretrain/scenes_tiny.py)
$MT pretrain --config scenes_tiny --data-path $S/train --output-dir $OUT/pretrain --resume \
    epochs=12 warmup_epochs=1 save_freq=12 vis_freq=12

echo "== 2/4 detection: ViTDet Mask R-CNN on the scenes =="
$MT det --backbone $CKPT --config tiny_cpu --output-dir $OUT/det --seed 0 --resume \
    --train-json $S/annotations/train.json --train-images $S/train \
    --val-json $S/annotations/val.json --val-images $S/val 2>&1 \
  | tee $OUT/det.log | grep --line-buffered -E "backbone |iter: [0-9]*9 |copypaste: [0-9]|Task|^error"

echo "== 3/4 segmentation: UperNet on the scenes (background + 10 classes) =="
$MT seg --backbone $CKPT --config tiny_cpu --output-dir $OUT/seg --seed 0 --resume \
    --train-images $S/train --train-masks $S/masks/train --val-images $S/val --val-masks $S/masks/val \
    --classes $S/classes.txt 2>&1 \
  | tee $OUT/seg.log | grep --line-buffered -E "backbone |Iter\(train\)|mIoU:|^error"

echo "== 4/4 prediction: overlays of a few validation scenes =="
mkdir -p $OUT/predict_inputs
cp $(ls $S/val/* | head -4) $OUT/predict_inputs/
# the 3 best detections of each scene are drawn even where the small model is unsure (scores shown)
$MT predict det $OUT/predict_inputs --config tiny_cpu --weights $OUT/det/model_final.pth \
    --classes-json $S/annotations/val.json --output-dir $OUT/predict/det --score-thresh 0.3 --min-draw 3 2>&1 \
  | grep -E "detections|^error"
# the runner's own copy of the config: it holds the class list the model was trained with
$MT predict seg $OUT/predict_inputs --config $OUT/seg/tiny_cpu.py --weights $OUT/seg/iter_150.pth \
    --output-dir $OUT/predict/seg 2>&1 | grep -E "images ->|^error"

echo
$PY -m mae_transfer.evaluate $OUT/det $OUT/seg bench/results/cpu_suite.json
echo
echo "pretraining:  $OUT/pretrain/{checkpoint-last.pth,loss_curve.png,reconstructions.png}"
echo "detection:    $OUT/det/result.json, eval_results.json    (box / mask AP)"
echo "segmentation: $OUT/seg/result.json, eval_results.json    (mIoU, per class)"
echo "predictions:  $OUT/predict/{det,seg}/*_overlay.png"
