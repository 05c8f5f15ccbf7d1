"""Several processes, one result: the process group a launcher describes, who does which images, and
collectives that fail loudly instead of hanging.

ddimkit does not start processes itself: ``torchrun`` or ``accelerate launch`` do, and describe the job in
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; MPI's
names work too). :func:`init` joins that group, with gloo for CPUs and NCCL for GPUs. Outside a launcher
every function here is a no-op on one process, so the same code runs either way.

Work is split by :func:`shard` into contiguous runs of whole batches, so every image is computed in the same
batch, with the same neighbours, as one process with that batch size computes it: the gathered result is
bit-identical, not merely close.

Faults: every collective has a timeout (``$DDIMKIT_DIST_TIMEOUT`` seconds, default 600), a peer that dies
breaks the others' sockets at once, and :func:`all_or_none` turns an exception on one rank into a
:class:`DistributedError` naming that rank on all the others. Either way each process stops with one clear
line rather than waiting for ever.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "launched", "rank", "world_size", "is_main", "init", "shard", "barrier",
           "agree_min", "all_or_none", "on_main", "all_reduce_sum", "gather", "all_gather"]

TIMEOUT_ENV = "DDIMKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0

# A launcher's variables first, then MPI's (mpirun, as ``accelerate launch --mpirun_hostfile`` uses).
_RANK = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


class DistributedError(ConnectionError):
    """Another process failed, died or stopped answering. Raised on every process that is still alive."""


def _env_int(names, default: int | None = None) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return default


def launched() -> bool:
    """True under ``torchrun``/``accelerate launch``/``mpirun`` (even with one process) or an initialized group."""
    return (dist.is_available() and dist.is_initialized()) or _env_int(_WORLD) is not None


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int(_WORLD, 1)


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int(_RANK, 0)


def is_main() -> bool:
    return rank() == 0


def timeout() -> float:
    """Seconds a collective may wait for the slowest process (``$DDIMKIT_DIST_TIMEOUT``, default 600)."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {value!r}")
    return seconds


def check_launch():
    """Refuse the one launch that looks parallel but is not: ``accelerate launch --cpu --num_processes N``.

    accelerate starts a single process for ``--cpu`` (several only through mpirun); it then sets
    ``MASTER_ADDR`` but no rank. Running on would silently use one process of the N asked for.
    """
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and os.environ.get("MASTER_ADDR")
            and _env_int(_WORLD) is None):
        raise ValueError("accelerate launch --cpu starts one process whatever --num_processes says; for N CPU "
                         "processes use 'accelerate launch --multi_gpu --num_processes N' (gloo on CPUs) or "
                         "'torchrun --nproc_per_node N'")


def init(device: str | torch.device | None = None) -> torch.device:
    """Join the launcher's process group and return this process's device.

    ``cuda`` (no index) becomes ``cuda:LOCAL_RANK``. The backend is NCCL for a CUDA device and gloo otherwise.
    A group that already exists (e.g. made by ``accelerate.Accelerator``) is reused. Outside a launcher this
    returns ``device`` and does nothing else.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    check_launch()
    if not launched():
        return device
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", _env_int(_LOCAL, 0) % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # env:// reads RANK and WORLD_SIZE; mpirun spells them differently.
        os.environ.setdefault("RANK", str(rank()))
        os.environ.setdefault("WORLD_SIZE", str(world_size()))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout()))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"could not join the {world_size()} processes at {os.environ['MASTER_ADDR']}:"
                                   f"{os.environ['MASTER_PORT']}: {_first_line(e)}") from None
        atexit.register(_leave)
    return device


def _leave():
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def quiet_others():
    """Send stdout of every process but rank 0 to /dev/null: one copy of each report line, not N."""
    if not is_main():
        sys.stdout = open(os.devnull, "w")


def shard(n: int, batch_size: int, r: int | None = None, world: int | None = None) -> range:
    """The images of rank ``r``: a contiguous run of whole batches of ``batch_size``, as even as whole batches allow.

    Batch boundaries are those of one process with the same batch size, so each image meets the same batch.
    """
    r = rank() if r is None else r
    world = world_size() if world is None else world
    batches = math.ceil(n / batch_size)
    lo, hi = r * batches // world, (r + 1) * batches // world
    return range(min(n, lo * batch_size), min(n, hi * batch_size))


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


def _collective(what: str, fn: Callable, *args):
    """Run one collective; a dead or silent peer becomes a DistributedError naming what was being done."""
    try:
        return fn(*args)
    except RuntimeError as e:  # DistBackendError, gloo's "Connection closed by peer", timeouts
        raise DistributedError(f"rank {rank()} of {world_size()} lost the other processes during {what} "
                               f"(one failed or stopped; timeout {timeout():g} s): {_first_line(e)}") from None


def _comm_device() -> torch.device:
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(what: str = "a barrier"):
    if world_size() > 1:
        # all_reduce rather than dist.barrier: it honours the group's timeout on every backend.
        all_reduce_sum(torch.zeros(1), what)


def all_reduce_sum(t: torch.Tensor, what: str = "a sum") -> torch.Tensor:
    """The element-wise sum of ``t`` over processes (``t`` itself in one process), on ``t``'s device."""
    if world_size() == 1:
        return t
    buf = t.to(_comm_device()).contiguous()
    _collective(what, dist.all_reduce, buf)
    return buf.to(t.device)


def agree_min(value: int, what: str = "agreeing on a size") -> int:
    """The smallest ``value`` over processes (e.g. a batch size each measured from its own free memory)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    _collective(what, dist.all_reduce, t, dist.ReduceOp.MIN)
    return int(t.item())


def _objects(obj, what: str) -> list:
    out = [None] * world_size()
    _collective(what, dist.all_gather_object, out, obj)
    return out


def on_main(fn: Callable, *args, what: str = "sharing rank 0's result"):
    """``fn(*args)`` run on rank 0 only, its result sent to every process (files are read where they are written)."""
    if world_size() == 1:
        return fn(*args)
    box = [fn(*args) if is_main() else None]
    _collective(what, dist.broadcast_object_list, box, 0)
    return box[0]


@contextlib.contextmanager
def all_or_none(what: str):
    """Run a block on every process; if it raises on any, it raises on all.

    The failing process re-raises its own exception; the others raise :class:`DistributedError` naming the
    rank and its error. Use it around work that is followed by a collective, so no process waits there for
    one that has already given up.
    """
    error = None
    try:
        yield
    except Exception as e:  # a KeyboardInterrupt ends the process, and its peers see the socket close
        error = e
    if world_size() > 1:
        report = None if error is None else f"{type(error).__name__}: {_first_line(error)}"
        failed = [(r, m) for r, m in enumerate(_objects(report, f"checking {what}")) if m is not None]
        if failed and error is None:
            r, message = failed[0]
            raise DistributedError(f"rank {r} of {world_size()} failed during {what}: {message}")
    if error is not None:
        raise error


def _padded(t: torch.Tensor, what: str) -> tuple[torch.Tensor, list[int]]:
    sizes = [int(s) for s in _objects(int(t.shape[0]), f"{what} (sizes)")]
    pad = max(sizes) - t.shape[0]
    buf = t.to(_comm_device()).contiguous()
    if pad:
        buf = torch.cat([buf, buf.new_zeros((pad, *t.shape[1:]))])
    return buf, sizes


def gather(t: torch.Tensor, what: str = "gathering results") -> torch.Tensor | None:
    """Every process's ``t`` concatenated in rank order on rank 0 (CPU); ``None`` on the others.

    With :func:`shard`'s contiguous shares, rank order is image order.
    """
    if world_size() == 1:
        return t
    buf, sizes = _padded(t, what)
    parts = [torch.empty_like(buf) for _ in sizes] if is_main() else None
    _collective(what, dist.gather, buf, parts, 0)
    if not is_main():
        return None
    return torch.cat([p[:s].cpu() for p, s in zip(parts, sizes)])


def all_gather(t: torch.Tensor, what: str = "gathering results") -> torch.Tensor:
    """Every process's ``t`` concatenated in rank order, on every process (CPU)."""
    if world_size() == 1:
        return t
    buf, sizes = _padded(t, what)
    parts = [torch.empty_like(buf) for _ in sizes]
    _collective(what, dist.all_gather, parts, buf)
    return torch.cat([p[:s].cpu() for p, s in zip(parts, sizes)])
