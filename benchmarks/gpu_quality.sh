#!/usr/bin/env bash
# Time to quality at GPU size in one device call: ddimkit's default recipe (the DDPM CIFAR-10 layout with one
# channel at 32×32, batch 128) on Fashion-MNIST for MINUTES, then DDIM-50 η = 0 samples scored by FID (10k
# against the 10k test images), KID and the classifier-FD. diffusers' recipe is not re-run here: its anchor
# (FID 13.2 after 7.5 H100-minutes) is in the project's GPU notes.
#
#   run tool: command "bash benchmarks/gpu_quality.sh", carry [".carry/fashion_mnist.npz"], with
#   /tmp/inception16.pt left on the warm machine by the call before (the fp16-rounded Inception; 87 MB of
#   fp32 weights do not fit one transfer beside the data).
#   CPU check: QUICK=1 OUT=/tmp/q INCEPTION16=.carry/inception16.pt bash benchmarks/gpu_quality.sh
set -u
: "${OUT:?set OUT to the folder for results}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MINUTES=${MINUTES:-4.5}
INC=${INCEPTION16:-/tmp/inception16.pt}
DATA=.carry/fashion_mnist.npz
mkdir -p "$OUT"
if [ "${QUICK:-0}" = 1 ]; then
  ARGS=(--quick --preset tiny --classifier mnist)
else
  ARGS=(--data "npz:$DATA:x_train" --ref "npz:$DATA:x_test" --classifier fashion-mnist --preset ddpm-cifar10
        --image-size 32 --minutes "$MINUTES" --num 10000 --num-kid 2000 --num-fid 10000 --batch-size 1000
        --set batch_size=128 --skip diffusers)
fi
[ -f "$INC" ] && ARGS+=(--inception-fp16 "$INC")
timeout --kill-after=10 $(( ${LIMIT:-500} )) "$PY" benchmarks/time_to_quality.py "${ARGS[@]}" \
  --out /tmp/ttq >"$OUT/quality.log" 2>&1
echo "exit $?" >>"$OUT/quality.log"
cp /tmp/ttq/time_to_quality.json /tmp/ttq/time_to_quality.md "$OUT/" 2>/dev/null
cp /tmp/ttq/ddimkit/loss.png "$OUT/" 2>/dev/null
true
