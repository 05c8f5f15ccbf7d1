"""The floor of a classifier-FD table: the same measure between real images and the reference.

    python benchmarks/classifier_floor.py --classifier fashion-mnist --a npz:fashion_mnist.npz:x_train \\
        --b npz:fashion_mnist.npz:x_test --num 500 --num-b 2000

A model that drew exactly the data's distribution would score about this at the same sizes: the Fréchet
distance is biased upward at small n, so a table's cells are read against it.
"""

from __future__ import annotations

import argparse

from ddimkit.classifier import classifier_fd, load_classifier, recognition
from ddimkit.data import load_images


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", required=True, choices=("mnist", "fashion-mnist"))
    ap.add_argument("--a", required=True, help="real images standing in for samples")
    ap.add_argument("--b", required=True, help="the reference images")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--num-b", type=int, default=2000)
    args = ap.parse_args()
    net = load_classifier(args.classifier)
    a, b = load_images(args.a)[:args.num], load_images(args.b)[:args.num_b]
    r = recognition(net, a)
    print(f"classifier-FD {classifier_fd(net, a, b):.3f} ({args.num} of {args.a} against {args.num_b} of {args.b}); "
          f"recognised {r.rate:.3f}, {r.classes_seen} classes")


if __name__ == "__main__":
    main()
