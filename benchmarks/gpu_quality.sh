#!/usr/bin/env bash
# Time to quality at GPU size: ddimkit's default recipe (the DDPM CIFAR-10 layout with one channel at 32×32,
# batch 128) on Fashion-MNIST for MINUTES, then DDIM-50 η = 0 samples scored by FID (10k against the 10k
# test images), KID and the classifier-FD. diffusers' recipe is not re-run here: its anchor (FID 13.2 after
# 7.5 H100-minutes) is in the project's GPU notes.
#
# The data (31 MB) and the fp16-rounded Inception (44 MB; 87 MB of fp32 weights fit no transfer) do not fit
# one 64 MiB transfer, and a 7.5-minute run with its scoring does not fit one 10-minute command, so it runs
# as two device calls on the same warm machine (each leaves what the next needs in /tmp):
#
#   STAGE=train bash benchmarks/gpu_quality.sh   carry [".carry/fashion_mnist.npz"], timeout_s 570
#   STAGE=score bash benchmarks/gpu_quality.sh   carry [".carry/inception16.pt"] (then the speed parts)
#   STAGE=all   bash benchmarks/gpu_quality.sh   both in one process (short MINUTES, data and Inception in /tmp)
#   CPU check:  QUICK=1 OUT=/tmp/q STAGE=train bash benchmarks/gpu_quality.sh; then STAGE=score
#   SET=batch_size=128,min_snr_gamma=0.25 ...   options over the default recipe (session 2 ran with γ = 0.25)
# The score stage also scores the network without its autoguidance guide (--unguided), from the same noise.
set -u
: "${OUT:?set OUT to the folder for results}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MINUTES=${MINUTES:-7.5}
STAGE=${STAGE:-all}
RUN=${RUN:-/tmp/ttq}
DATA=/tmp/ddimkit-fashion_mnist.npz
INC=/tmp/inception16.pt
mkdir -p "$OUT"
# Whatever this call carried goes to /tmp, where the next call on the warm machine finds it.
[ -f .carry/fashion_mnist.npz ] && cp .carry/fashion_mnist.npz "$DATA"
[ -f .carry/inception16.pt ] && cp .carry/inception16.pt "$INC"
if [ "${QUICK:-0}" = 1 ]; then
  ARGS=(--quick --preset tiny --classifier mnist --unguided)
else
  ARGS=(--data "npz:$DATA:x_train" --ref "npz:$DATA:x_test" --classifier fashion-mnist --preset ddpm-cifar10
        --image-size 32 --minutes "$MINUTES" --num 10000 --num-kid 2000 --num-fid 10000 --batch-size 1000
        --save-every 1000 --unguided --set "${SET:-batch_size=128}")
fi
[ "$STAGE" != train ] && [ -f "$INC" ] && ARGS+=(--inception-fp16 "$INC")
timeout --kill-after=10 $(( ${LIMIT:-540} )) "$PY" benchmarks/time_to_quality.py "${ARGS[@]}" --skip diffusers \
  --stage "$STAGE" --out "$RUN" >"$OUT/quality-$STAGE.log" 2>&1
echo "exit $?" >>"$OUT/quality-$STAGE.log"
# At most 8 files come back from a call, so the train stage's files are not copied again by the score stage.
if [ "$STAGE" = score ]; then cp "$RUN"/time_to_quality.json "$RUN"/time_to_quality.md "$OUT/" 2>/dev/null
else cp "$RUN"/time_to_quality.json "$RUN"/time_to_quality.md "$RUN"/ddimkit/train_info.json \
  "$RUN"/ddimkit/loss.png "$OUT/" 2>/dev/null; fi
true
