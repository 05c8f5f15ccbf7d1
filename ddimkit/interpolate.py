"""Interpolation between noises (or any tensors): spherical (slerp) and linear (lerp).

Gaussian noise in high dimension lies near a sphere of radius √D; the straight line between two such
points passes well inside it, where a DDIM model has seen no inputs. slerp follows the great circle
instead (DDIM paper §5.3).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["slerp", "lerp", "angle_degrees"]


def _alphas(alpha):
    """A float alpha, or a 1-D sequence of them (the result then gains a leading dimension)."""
    if isinstance(alpha, (int, float)):
        return torch.tensor(float(alpha), dtype=torch.float64), False
    alpha = torch.as_tensor(alpha, dtype=torch.float64).cpu()
    if alpha.ndim == 0:
        return alpha, False
    if alpha.ndim != 1:
        raise ValueError("alpha must be a number or a 1-D sequence of numbers")
    return alpha, True


def _check(z0: torch.Tensor, z1: torch.Tensor):
    if z0.shape != z1.shape:
        raise ValueError(f"cannot interpolate between shapes {tuple(z0.shape)} and {tuple(z1.shape)}")


def lerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | Sequence[float]) -> torch.Tensor:
    """(1-α) z0 + α z1. A sequence of K alphas returns a tensor of shape (K, *z0.shape)."""
    _check(z0, z1)
    a, _ = _alphas(alpha)
    a = a.to(device=z0.device, dtype=z0.dtype).reshape(a.shape + (1,) * z0.ndim)
    return (1 - a) * z0 + a * z1


def _unit_orthogonal(u: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to each row of ``u``, chosen deterministically."""
    if u.shape[1] < 2:
        raise ValueError("slerp between antiparallel scalars is undefined")

    def project_out(c):
        return c - (c * u).sum(1, keepdim=True) / norm**2 * u

    basis = torch.zeros(2, *u.shape, dtype=u.dtype, device=u.device)
    basis[0, :, 0] = 1
    basis[1, :, 1] = 1
    # The rolled vector is generic; e0 and e1 cannot both be parallel to u.
    candidates = [project_out(torch.roll(u, 1, dims=1)), project_out(basis[0]), project_out(basis[1])]
    pick = candidates[-1]
    for c in reversed(candidates[:-1]):
        pick = torch.where(c.norm(dim=1, keepdim=True) > 1e-3 * norm, c, pick)
    return pick / pick.norm(dim=1, keepdim=True)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | Sequence[float], eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation: sin((1-α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1, θ = ∠(z0, z1).

    A batch (B, ...) is interpolated per sample, the angle being taken over all dimensions but the first;
    a 1-D tensor is a single vector. A sequence of K alphas returns shape (K, *z0.shape).

    Edge cases: nearly parallel vectors (sin θ ≈ 0, θ ≈ 0) fall back to lerp, which is the limit. For
    antiparallel vectors the great circle is not unique; the path then turns through a fixed direction
    orthogonal to z0 (z0's elements rolled by one, made orthogonal), so the result is still defined,
    deterministic, and has the linearly interpolated norm.
    """
    _check(z0, z1)
    a, stacked = _alphas(alpha)
    single = z0.ndim == 1
    u0 = z0.reshape(1, -1) if single else z0.reshape(z0.shape[0], -1)
    u1 = z1.reshape(1, -1) if single else z1.reshape(z1.shape[0], -1)
    u0, u1 = u0.double(), u1.double()
    n0, n1 = u0.norm(dim=1, keepdim=True), u1.norm(dim=1, keepdim=True)
    if (n0 == 0).any() or (n1 == 0).any():
        raise ValueError("slerp is undefined for a zero vector")
    cos = ((u0 * u1).sum(1, keepdim=True) / (n0 * n1)).clamp(-1, 1)
    theta = torch.arccos(cos)

    # Antiparallel rows: replace z1's direction by a unit vector orthogonal to z0, travel on that circle
    # (angle π in total), scaling the norm linearly, which is what slerp does between equal-norm points.
    anti = (math.pi - theta) < 1e-4
    perp = _unit_orthogonal(u0, n0) if anti.any() else None

    rows = []
    for al in a.reshape(-1).tolist():
        w0 = torch.sin((1 - al) * theta) / torch.sin(theta)
        w1 = torch.sin(al * theta) / torch.sin(theta)
        out = w0 * u0 + w1 * u1
        near = torch.sin(theta) < eps
        out = torch.where(near, (1 - al) * u0 + al * u1, out)
        if anti.any():
            phi = al * math.pi
            norm = (1 - al) * n0 + al * n1
            circ = (math.cos(phi) * u0 / n0 + math.sin(phi) * perp) * norm
            out = torch.where(anti, circ, out)
        rows.append(out.reshape(z0.shape).to(z0.dtype))
    return torch.stack(rows) if stacked else rows[0]


def angle_degrees(z0: torch.Tensor, z1: torch.Tensor) -> float:
    """The angle between two noises seen as vectors, in degrees: the arc that :func:`slerp` walks."""
    a, b = z0.flatten().double(), z1.flatten().double()
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))))
