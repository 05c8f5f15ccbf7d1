"""Wall-clock budgets for training (``TrainConfig.minutes``, ``ddimkit train --minutes``).

A run with a budget stops at the first step after the deadline and saves a checkpoint there, so it can be
resumed (each invocation gets the budget anew). With ``steps="auto"`` the run also chooses its length:
from the pace of its steps (planned at steps 10, 100 and 1,000) it sets ``steps`` to what the remaining time
allows, so that the cosine learning-rate schedule ends at the deadline. The chosen length is stored with the
run, and a resumed run keeps it.

With several processes, rank 0 alone reads the clock and broadcasts its decision, so that every rank stops
at the same step (a rank that stopped alone would leave the others waiting in the next all-reduce).
"""

from __future__ import annotations

import time

import torch

__all__ = ["Deadline"]


class Deadline:
    """Rank 0's clock, shared with the other ranks through ``broadcast`` (a no-op with one process).

    Args:
        minutes: the budget; ``None`` means no deadline.
        broadcast: ``f(tensor) -> tensor`` that returns rank 0's tensor on every rank.
        world: number of processes; with more than one, the clock is consulted every ``every`` steps
            only, since each consultation is a collective.
        every: steps between consultations with several processes.
    """

    def __init__(self, minutes: float | None, broadcast=None, world: int = 1, every: int = 10):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.broadcast = broadcast
        self.world = world
        self.every = 1 if world == 1 else every
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _shared(self, value: float) -> float:
        if self.world == 1 or self.broadcast is None:
            return value
        return float(self.broadcast(torch.tensor([value], dtype=torch.float64))[0])

    def passed(self, step: int) -> bool:
        """Whether the budget is spent; the same answer on every rank. Call it on every step."""
        if self.seconds is None or step % self.every:
            return False
        return self._shared(float(self.elapsed() >= self.seconds)) > 0

    def planned_steps(self, done: int, timed_steps: int, timed_seconds: float) -> int:
        """Total steps that fit the budget at the measured pace (``timed_steps`` took ``timed_seconds``)."""
        pace = max(timed_seconds, 1e-9) / max(timed_steps, 1)
        remaining = max(0.0, self.seconds - self.elapsed())
        return int(self._shared(float(done + max(1, int(remaining / pace)))))
