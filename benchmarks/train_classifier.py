"""Train the shipped scoring classifiers (``ddimkit/classifier.py``), seeded, and report their test accuracy.

    python benchmarks/train_classifier.py --mnist ../shared/data/mnist_10k.npz \\
        --fashion ../shared/data/fashion_mnist.npz

MNIST: trained on the 5,000 digits of ``mnist_10k.npz`` that are not among the bundled ``mnist-5k`` digits
(which the demo trains on), tested on those 5,000 bundled digits. Fashion-MNIST: trained on ``x_train``,
tested on ``x_test``. Writes ``ddimkit/assets/classifier-<name>.safetensors`` (fp16) and prints the accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ddimkit.classifier import ASSETS, predict, recognition, train_classifier


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save(net, name: str, xt, yt):
    acc = float((predict(net, xt).argmax(1).numpy() == yt).mean())
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items() if v.is_floating_point()},
              str(ASSETS / f"classifier-{name}.safetensors"))
    # fp16 storage must not change the classifier's verdicts noticeably: re-check with the stored weights.
    from ddimkit.classifier import load_classifier

    net16 = load_classifier(name)
    acc16 = float((predict(net16, xt).argmax(1).numpy() == yt).mean())
    real = recognition(net16, xt).rate
    g = torch.Generator().manual_seed(1)
    noise = (torch.rand((1000, 28, 28), generator=g) * 255).to(torch.uint8)
    print(f"{name}: test accuracy {acc:.4f} (fp32), {acc16:.4f} (as stored, fp16) on {len(yt)} images; "
          f"recognised (confidence >= 0.9): real test images {real:.3f}, uniform noise {recognition(net16, noise).rate:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", help="mnist_10k.npz (keys x, y)")
    ap.add_argument("--fashion", help="fashion_mnist.npz (keys x_train, y_train, x_test, y_test)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.mnist:
        d = np.load(args.mnist)
        bundled = np.load(ASSETS / "mnist_5k.npz")
        seen = {r.tobytes() for r in bundled["x"]}
        other = np.array([r.tobytes() not in seen for r in d["x"]])
        print(f"mnist: {other.sum()} training digits (sha256 {_sha(args.mnist)})")
        net = train_classifier(d["x"][other], d["y"][other], epochs=8, seed=args.seed)
        _save(net, "mnist", bundled["x"], bundled["y"])
    if args.fashion:
        d = np.load(args.fashion)
        print(f"fashion-mnist: {len(d['x_train'])} training images (sha256 {_sha(args.fashion)})")
        net = train_classifier(d["x_train"], d["y_train"], epochs=3, seed=args.seed)
        _save(net, "fashion-mnist", d["x_test"], d["y_test"])


if __name__ == "__main__":
    main()
