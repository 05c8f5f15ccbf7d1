"""Write a training run's EMA weights into the package as a shipped model (``pretrained:NAME``).

    python tools/package_pretrained.py --name fashion-mnist --run runs/pretrained-fashion \\
        --quality runs/pretrained-fashion-quality.json
    python tools/package_pretrained.py --name mnist --run runs/pretrained-mnist --quality runs/pretrained-mnist-quality.json

The card's fixed fields (the training command, the data and its sha256) are below; ``--quality`` is the JSON
that ``benchmarks/pretrained_quality.py`` writes for the run, whose ``summary`` lines go on the card.
"""

from __future__ import annotations

import argparse
import json

from ddimkit import pretrained
from ddimkit.checkpoint import read_json
from ddimkit.train import DEFAULT_LR, read_run_config

TRAIN = "OMP_NUM_THREADS=1 ddimkit train --data {data} --model {model} --minutes {minutes} --batch-size 64 " \
        "--save-every 1000 --sample-every 2000 --log-every 100 --seed 0 --out {out}"

CARDS = {
    "fashion-mnist": dict(
        description="Fashion-MNIST, 28×28 grey, unconditional; x0-prediction, min-SNR-0.25, linear β, T = 1000",
        network="`small` UNet (16-32-64 channels, attention at 7×7)",
        data="the 60,000 training images of fashion_mnist.npz (x_train)",
        data_sha256="bf16299aee8efc6d8a0ba7dbc2d3c311bf306a071baf1c0ca54ebae02e726de9",
        args=dict(data="npz:fashion_mnist.npz:x_train", model="small", minutes=80, out="runs/pretrained-fashion"),
    ),
    "mnist": dict(
        description="MNIST digits, 28×28 grey, unconditional; x0-prediction, min-SNR-0.25, linear β, T = 1000",
        network="`tiny` UNet (8-16-32 channels, attention at 7×7)",
        data="the 10,000 digits of mnist_10k.npz (x), which include the 5,000 bundled mnist-5k digits",
        data_sha256="c7dd463a6c0da42745794aa57daa353eb779e4a01a089889acf8ae6f1d7d2f5e",
        args=dict(data="npz:mnist_10k.npz:x", model="tiny", minutes=60, out="runs/pretrained-mnist"),
    ),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, choices=sorted(CARDS))
    ap.add_argument("--run", required=True, help="the run folder that `ddimkit train` wrote")
    ap.add_argument("--quality", default=None, help="benchmarks/pretrained_quality.py's JSON for this run")
    args = ap.parse_args()
    fields = dict(CARDS[args.name])
    fields["command"] = TRAIN.format(**fields.pop("args"))
    cfg = read_run_config(args.run)["train"]
    lr = cfg["lr"] or DEFAULT_LR[cfg["model"]]
    fields["training"] = (f"batch {cfg['batch_size']}, peak lr {lr:g}, within a {cfg['minutes']:g}-minute budget on "
                          "one thread of a 2-core CPU")
    if args.quality:
        q = read_json(args.quality)
        fields["quality"] = q["summary"]
        fields["quality_command"] = q["command"]
    out = pretrained.package(args.run, args.name, fields)
    print(json.dumps(pretrained.card(args.name), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
