"""Sampling split across the processes of ``torchrun`` / ``accelerate launch``.

Image i is drawn from its own generator seeded with ``seeds[i]`` (the ``--per-sample-seeds`` rule), so it
depends on nothing but its seed: not on the number of processes, and not on which process draws it. Each
process samples a contiguous run of whole batches (:func:`ddimkit.distributed.shard`) and the runs are
gathered in order, so N processes give exactly the images that one process gives with the same batch size
(other batch sizes agree to float round-off, as in one process).

    torchrun --standalone --nproc_per_node 8 -m ddimkit -- sample --ckpt RUN --num 50000 --out s.npz

    # in Python, under a launcher
    device = dk.distributed.init("cuda")                    # joins the group; cuda:LOCAL_RANK
    pipe = dk.load(RUN, device=device)
    x = pipe.sample(seeds=range(50_000), distributed=True)  # every process gets all 50,000
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from . import distributed as D

__all__ = ["shard_batch_size", "sample_share", "sample_sharded", "sample_for_evaluation"]


def shard_batch_size(pipe, batch_size: int | None, n: int) -> int:
    """One batch size for all processes: the user's, else the smallest that each process picks for its share.

    Without ``batch_size`` a process would batch its whole share (CPU) or what fits (GPU); the minimum over
    processes keeps batch boundaries, and so every image's batch, the same on all of them.
    """
    if batch_size is not None:
        return pipe._batch_size(batch_size, n)
    share = -(-n // D.world_size())
    return D.agree_min(pipe._batch_size(None, max(1, share)), "agreeing on the batch size")


def sample_share(pipe, seeds: Sequence[int], batch_size: int | None = None, **kw) -> tuple[range, torch.Tensor]:
    """This process's part of the images of ``seeds``: ``(indices, images)``, images in [-1, 1] on the CPU.

    ``kw`` are :meth:`ddimkit.Pipeline.sample`'s sampling options. Only rank 0 shows progress and gets
    ``callback`` calls. A failure on any process raises on every process (:func:`ddimkit.distributed.all_or_none`).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("number of images must be at least 1, got 0")
    D.init(pipe.device)
    with D.all_or_none("sampling"):
        bs = shard_batch_size(pipe, batch_size, len(seeds))
        mine = D.shard(len(seeds), bs)
        if not D.is_main():
            kw = {**kw, "progress": False, "callback": None}
        labels = pipe.class_labels(kw.get("class_labels"), len(seeds))  # image i's label, for any process count
        if labels is not None:
            kw = {**kw, "class_labels": labels[mine.start:mine.stop]}
        if len(mine):
            images = pipe.sample(seeds=seeds[mine.start:mine.stop], batch_size=bs, **kw)
        else:  # more processes than batches: this one only joins the gather
            images = torch.empty((0, *pipe.image_shape))
    return mine, images


def sample_sharded(pipe, seeds: Sequence[int], batch_size: int | None = None, to: str = "all",
                   **kw) -> torch.Tensor | None:
    """All images of ``seeds``, sampled in shares and gathered in order.

    ``to="all"`` returns them on every process; ``to="main"`` on rank 0 only (``None`` elsewhere), which keeps
    one copy in memory for writing a file.
    """
    _, images = sample_share(pipe, seeds, batch_size, **kw)
    if to == "main":
        return D.gather(images, "gathering the samples")
    if to == "all":
        return D.all_gather(images, "gathering the samples")
    raise ValueError(f"to must be 'all' or 'main', got {to!r}")


def sample_for_evaluation(pipe, num: int, seed: int, batch_size: int | None = None,
                          **kw) -> tuple[torch.Tensor, float]:
    """The images an evaluation measures, and the wall seconds all processes took to sample them.

    In one plain process: all ``num`` from one generator seeded ``seed``, as ddimkit always sampled them.
    Under a launcher (any number of processes): this process's share of seeds ``seed .. seed+num-1``, so the
    results do not depend on the number of processes.
    """
    t0 = time.perf_counter()
    if not D.launched():
        x = pipe.sample(num, generator=torch.Generator().manual_seed(seed), batch_size=batch_size, **kw)
        return x, time.perf_counter() - t0
    _, x = sample_share(pipe, range(seed, seed + num), batch_size, **kw)
    D.barrier("waiting for the slowest process to finish sampling")
    return x, time.perf_counter() - t0
