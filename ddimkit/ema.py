"""Exponential moving average of a network's weights, with the warm-up that lets early weights fade."""

from __future__ import annotations

import torch

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(step: int, cfg) -> float:
    """EMA decay after ``step`` updates; the warm-up lets early weights fade fast."""
    if not cfg.ema_warmup:
        return cfg.ema_decay
    return min(cfg.ema_decay, (1 + step) / (10 + step))


class EMA:
    """Exponential moving average of parameters (buffers are copied)."""

    def __init__(self, model: torch.nn.Module):
        self.params = [p.detach().clone() for p in model.parameters()]
        self.buffers = [b.detach().clone() for b in model.buffers()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float):
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - decay)
        for b, src in zip(self.buffers, model.buffers()):
            b.copy_(src)

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        return dict(zip(names, self.params + self.buffers))

    def load(self, model: torch.nn.Module, sd: dict[str, torch.Tensor]):
        named = list(model.named_parameters()) + list(model.named_buffers())
        for dst, (name, _) in zip(self.params + self.buffers, named):
            dst.copy_(sd[name])
