"""The toy pipeline of the "diffusion from scratch" tutorial, kept apart from the real diffusion math.

Data stays in [0, 1]. ``corrupt`` mixes an image with *uniform* noise, x(1-a) + a·U(0, 1); a network (the
BasicUNet) learns to predict the clean image from the mix, without being told the amount; sampling starts
from uniform noise and at step i of n moves 1/(n-i) of the way towards the network's prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["corrupt", "toy_train_step", "toy_sample"]


def corrupt(x: torch.Tensor, amount: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x·(1-a) + a·U(0, 1), with one amount a ∈ [0, 1] per image."""
    amount = torch.as_tensor(amount, dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.ndim - 1))
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x * (1 - amount) + noise * amount


def toy_train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One step of the tutorial's training: random amounts, corrupt, predict x, MSE. Returns the loss."""
    amount = torch.rand(x.shape[0], generator=generator).to(x.device)
    pred = net(corrupt(x, amount, generator))
    loss = F.mse_loss(pred, x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def toy_sample(net: torch.nn.Module, shape, steps: int = 40, generator: torch.Generator | None = None,
               device=None) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Start from U(0, 1) noise; at step i move 1/(steps-i) of the way to the prediction.

    Returns the samples and the histories of inputs and predictions (one tensor per step, on the CPU).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x = torch.rand(tuple(shape), generator=generator).to(device)
    inputs, preds = [], []
    for i in range(steps):
        pred = net(x)
        inputs.append(x.cpu())
        preds.append(pred.cpu())
        mix = 1 / (steps - i)
        x = x * (1 - mix) + pred * mix
    return x, inputs, preds
