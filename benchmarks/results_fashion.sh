#!/usr/bin/env bash
# docs/results.md, measured on the shipped Fashion-MNIST model on a 2-core CPU, as two streams of one thread
# each, run at once: `bash benchmarks/results_fashion.sh tables` and `bash benchmarks/results_fashion.sh kid`
# (the last step of `kid` waits for the DDPM-1000 samples of `tables`). Resumable: every sweep skips the
# cells already in its folder.
#
# Sizes are what 2 CPU cores allow in about an hour (one thread runs ~300 network evaluations of this model
# a second, and the Inception 3-6 images a second):
# - tables: Table 1 in classifier-FD (no Inception), n = 500 per cell against 2,000 test images; S = 1000
#   only for η = 1 (DDPM) and η = 0, with n = 200 (a 1000-step cell costs 20 times a 50-step one);
# - kid: KID (± std) and FID on Inception features for the cells the claims rest on, n = 500 against the
#   same 2,000 test images, and the model card's numbers; Table 2 on 20 test images, with 0 and 3
#   fixed-point iterations; the `ddimkit explore` figures; a second seed for the close cells.
set -euo pipefail
D=${D:-../shared/data/fashion_mnist.npz}
OUT=${OUT:-runs/results-fashion}
M=pretrained:fashion-mnist
REF="--ref npz:$D:x_test --ref-num 2000"
CLS="--classifier fashion-mnist --no-inception"
FLOOR="python benchmarks/classifier_floor.py --classifier fashion-mnist --b npz:$D:x_test --num-b 2000"
export OMP_NUM_THREADS=1
mkdir -p "$OUT/kid" "$OUT/table1" "$OUT/table1-1000"
case "${1:-}" in
tables)
    ddimkit sweep --ckpt $M $REF $CLS --num 500 --steps 10,20,50,100 --eta 0,0.2,0.5,1,large \
        --solvers dpmpp-2m --out "$OUT/table1"
    $FLOOR --a "npz:$D:x_train" --num 500 | tee "$OUT/table1/floor.txt"
    $FLOOR --a "npz:$D:x_train" --num 200 | tee "$OUT/table1-1000/floor.txt"
    ddimkit sweep --ckpt $M $REF $CLS --num 200 --steps 1000 --eta 1,0 --out "$OUT/table1-1000"
    $FLOOR --a "npz:$OUT/table1/samples/ddim-eta0.0-steps50.npz" --num 200 \
        | tee "$OUT/table1-1000/ddim-eta0-50-first200.txt"
    ;;
kid)
    ddimkit fid "npz:$D:x_train" "npz:$D:x_test" --num 500 --num-b 2000 --kid | tee "$OUT/kid/floor.txt"
    ddimkit sweep --ckpt $M $REF --classifier fashion-mnist --num 500 --steps 10,20,50 --eta 0 \
        --solvers dpmpp-2m --out "$OUT/kid"
    python benchmarks/pretrained_quality.py --ckpt $M --classifier fashion-mnist --ref "npz:$D:x_test" \
        --real "npz:$D:x_train" --num 500 --num-ref 2000 --kid --out "$OUT/quality.json"
    ddimkit sweep --ckpt $M --ref "npz:$D:x_test" --no-fid --reconstruction --recon-num 20 \
        --steps 10,20,50,100,1000 --refine 0,3 --out "$OUT/table2"
    ddimkit explore schedule --out "$OUT/figures"
    for e in trajectory eta-vs-ddpm steps-grid determinism; do
        ddimkit explore $e --ckpt $M --out "$OUT/figures"
    done
    for e in noising reconstruction interpolation; do  # these take real images
        ddimkit explore $e --ckpt $M --data "npz:$D:x_test" --out "$OUT/figures"
    done
    ddimkit sweep --ckpt $M $REF $CLS --num 500 --steps 10,20,50 --eta 0,0.2,1 --seed 1000 \
        --out "$OUT/table1-seed1000"
    ddimkit fid "$OUT/table1/samples/ddim-eta1.0-steps50.npz" "npz:$D:x_test" --num 500 --num-b 2000 --kid \
        | tee "$OUT/kid/ddim-eta1-50.txt"
    ddimkit fid "$OUT/table1/samples/ddim-eta0.0-steps50.npz" "npz:$D:x_test" --num 200 --num-b 2000 --kid \
        | tee "$OUT/kid/ddim-eta0-50-first200.txt"
    ddpm="$OUT/table1-1000/samples/ddim-eta1.0-steps1000.npz"
    while [ ! -f "$ddpm" ]; do sleep 20; done
    ddimkit fid "$ddpm" "npz:$D:x_test" --num 200 --num-b 2000 --kid | tee "$OUT/kid/ddpm-1000.txt"
    ;;
*)
    echo "usage: bash benchmarks/results_fashion.sh tables|kid" >&2; exit 2 ;;
esac
