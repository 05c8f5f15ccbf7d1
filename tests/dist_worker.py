"""Run under ``torchrun`` by tests/test_distributed.py: the Python API across processes.

    torchrun --standalone --nproc_per_node 2 tests/dist_worker.py RUN OUT

Every rank writes ``OUT/rank<r>.pt``: the gathered images of each sampler, the images its own network
evaluated, FID/KID of sharded statistics, the error a failure on the other rank gave, and how many sampling
calls a re-run sweep made.
"""

import sys
from pathlib import Path

import torch

import ddimkit as dk
from ddimkit import distributed as D
from ddimkit import evaluate as E
from ddimkit import metrics
from ddimkit.sharded_metrics import sharded_features

SAMPLERS = [("ddim", 0.0, 4), ("ddim", 1.0, 4), ("ddpm", 0.0, 6)]
NUM, BATCH = 7, 2


class FakeInception(torch.nn.Module):
    """A fixed random map to 2048 features, standing in for the Inception network."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.pool = torch.nn.AvgPool2d(23)
        self.fc = torch.nn.Linear(3 * 13 * 13, 2048)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 0.05)
            self.fc.bias.copy_(torch.randn(2048, generator=g) * 0.1)

    def forward(self, x):
        return torch.tanh(self.fc(self.pool(x).flatten(1)))


def samples(pipe):
    return {f"{s}-{e}": pipe.sample(seeds=range(NUM), sampler=s, eta=e, steps=k, batch_size=BATCH, distributed=True)
            for s, e, k in SAMPLERS}


def main(run, out):
    out = Path(out)
    D.init("cpu")
    pipe = dk.load(run, device="cpu")
    seen = []
    forward = pipe.model.forward
    pipe.model.forward = lambda x, t, *a, **k: (seen.append(x.shape[0]), forward(x, t, *a, **k))[1]
    result = {"images": samples(pipe), "evaluated": sum(seen)}

    ref = E.read_image_set("mnist-5k", num=13)
    fake = FakeInception()
    u8 = dk.data.to_uint8(result["images"]["ddim-1.0"])
    stats = E.image_set_stats(ref, fake, batch_size=4, use_cache=False)
    result["fid"] = metrics.fid_from_stats(stats, E.image_set_stats(E.ImageSet("s", u8), fake, 4, use_cache=False))
    result["kid"] = metrics.kid(sharded_features(ref.images, fake, 4), sharded_features(u8, fake, 4), subset_size=5)

    try:
        with D.all_or_none("a step that fails on rank 1"):
            if D.rank() == 1:
                raise ValueError("out of memory on purpose")
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"

    kw = dict(etas=[0.0], num=5, batch_size=BATCH, inception=fake, progress=False, use_cache=False)
    E.fid_table(pipe, ref, out / "sweep", [2], **kw)
    calls = []
    real = pipe.sample
    pipe.sample = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    result["sweep_rows"] = E.fid_table(pipe, ref, out / "sweep", [2], **kw)
    result["sweep_calls_on_rerun"] = len(calls)
    torch.save(result, out / f"rank{D.rank()}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
