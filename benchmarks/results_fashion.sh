#!/usr/bin/env bash
# docs/results.md, measured on the shipped Fashion-MNIST model on a 2-core CPU. Resumable: every sweep skips
# the cells already in its folder. Usage: bash benchmarks/results_fashion.sh [DATA.npz] [OUT]
#
# Sizes are what 2 CPU cores allow in about an hour (the Inception runs at ~6 images/s there):
# - Table 1 in classifier-FD (no Inception): n = 500 per cell; S = 1000 only for η = 0 and η = 1 (DDPM);
# - KID (Inception) for the cells that the claims rest on, n = 500 against 2,000 test images;
# - a second seed for the close cells;
# - Table 2 on 50 test images, with 0 and 3 fixed-point iterations.
set -euo pipefail
D=${1:-../shared/data/fashion_mnist.npz}
OUT=${2:-runs/results-fashion}
M=pretrained:fashion-mnist
REF="--ref npz:$D:x_test --ref-num 2000"
CLS="--classifier fashion-mnist --no-inception"
mkdir -p "$OUT"
ddimkit sweep --ckpt $M $REF $CLS --num 500 --steps 10,20,50,100 --eta 0,0.2,0.5,1,large --solvers dpmpp-2m \
    --out "$OUT/table1"
ddimkit sweep --ckpt $M $REF $CLS --num 500 --steps 1000 --eta 0,1 --out "$OUT/table1-1000"
ddimkit sweep --ckpt $M $REF $CLS --num 500 --steps 10,20,50 --eta 0,1 --seed 1000 --out "$OUT/table1-seed1000"
ddimkit sweep --ckpt $M $REF --classifier fashion-mnist --num 500 --steps 10,20,50 --eta 0 --solvers dpmpp-2m \
    --out "$OUT/kid"
ddimkit fid "$OUT/table1-1000/samples/ddim-eta1.0-steps1000.npz" "npz:$D:x_test" --num 500 --num-b 2000 --kid \
    | tee "$OUT/kid/ddpm-1000.txt"
ddimkit fid "$OUT/table1/samples/ddim-eta1.0-steps50.npz" "npz:$D:x_test" --num 500 --num-b 2000 --kid \
    | tee "$OUT/kid/ddim-eta1-50.txt"
ddimkit fid "npz:$D:x_train" "npz:$D:x_test" --num 500 --num-b 2000 --kid | tee "$OUT/kid/floor.txt"
python benchmarks/classifier_floor.py --classifier fashion-mnist --a "npz:$D:x_train" --b "npz:$D:x_test" \
    --num 500 --num-b 2000 | tee "$OUT/table1/floor.txt"
ddimkit sweep --ckpt $M --ref "npz:$D:x_test" --no-fid --reconstruction --recon-num 50 \
    --steps 10,20,50,100,1000 --refine 0,3 --out "$OUT/table2"
ddimkit explore schedule --out "$OUT/figures"
for e in trajectory eta-vs-ddpm steps-grid determinism; do
    ddimkit explore $e --ckpt $M --out "$OUT/figures"
done
for e in noising reconstruction interpolation; do  # these take real images
    ddimkit explore $e --ckpt $M --data "npz:$D:x_test" --out "$OUT/figures"
done
