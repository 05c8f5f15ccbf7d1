"""Noise assignment: a training batch's images and noise draws are paired so that the pairs lie close.

Immiscible Diffusion (Li et al. 2024, "Accelerating Diffusion Training with Noise Assignment") pairs the
batch's B images with its B noise draws by a linear assignment that minimises Σ‖x0_i − ε_π(i)‖², instead of
at random; minibatch optimal-transport flow matching (Tong et al. 2023; Pooladian et al. 2023) is the same
coupling. Every noise draw is still used once, so the noise's marginal is still N(0, I), but an image now
shares its x_t with fewer distant images, which makes x̂0's target less ambiguous at high noise and the paths
of the probability-flow ODE straighter.

Why this suits DDIM η = 0 in particular. For any coupling of x0 and ε with these marginals, the ODE
dx/dt = E[√ᾱ_t' x0 + √(1-ᾱ_t)' ε | x_t] carries the law of x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε from noise to data
(the stochastic-interpolant view of flow matching), and DDIM η = 0 is that ODE written with
ε̂ = (x_t − √ᾱ_t x̂0)/√(1-ᾱ_t): it stays exact. The stochastic samplers (η > 0, DDPM) use q(x_s | x_t, x0),
which assumes ε independent of x0. The dependence a batch of 64 makes looks weak, but on Fashion-MNIST it
costs DDIM η = 1 most of its shapes (docs/training.md, "Noise assignment").
"""

from __future__ import annotations

import torch

__all__ = ["assign_noise", "NOISE_ASSIGNMENTS"]

#: ``none``: noise paired with images as drawn; ``batch``: the assignment over the whole (global) batch.
NOISE_ASSIGNMENTS = ("none", "batch")


def assign_noise(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``noise`` reordered along the batch so that Σ_i ‖x0_i − noise_i‖² is least (an exact assignment).

    Args:
        x0: images (B, ...).
        noise: B noise draws of the same shape.

    Returns:
        a permutation of ``noise``'s rows (the same tensors, reordered).
    """
    from scipy.optimize import linear_sum_assignment  # here: every `ddimkit` command imports this module

    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    # ‖x − n‖² = ‖x‖² − 2⟨x, n⟩ + ‖n‖²: the first term is the same for every pairing, so the cost is the rest.
    # float64 keeps ties between near-equal pairings from being broken by rounding in the float32 products.
    x = x0.reshape(len(x0), -1).double()
    n = noise.reshape(len(noise), -1).double()
    cost = (n * n).sum(1)[None, :] - 2 * x @ n.T
    _, cols = linear_sum_assignment(cost.numpy())  # square cost: the rows come back as 0..B-1, in order
    return noise[torch.from_numpy(cols)]
