"""The notes' experiments as functions: each writes its figure(s), ``NAME.json`` and ``NAME.md`` into a folder.

======================  ==============================================================================
``schedule``            √ᾱ_t, √(1-ᾱ_t) and log-SNR against t for the four beta schedules (from-scratch note)
``noising``             real images through the DDPM forward process and through the toy ``corrupt``
``trajectory``          x_t and x̂0 along DDPM and DDIM sampling (the DDPM note's all_images / all_x_0)
``eta-vs-ddpm``         DDIM(η = 1, full grid) against DDPM, clipping off and on; σ² in float32 (DDIM note)
``steps-grid``          the DDIM note's η × steps grid from one seed
``determinism``         one x_T, two generators: η = 0 ignores the generator, η > 0 does not
``reconstruction``      invert → reconstruct per step count, plain and with fixed-point refinement (DDIM Table 2)
``interpolation``       slerp (and lerp, for contrast) between two seeds and between two inverted images
======================  ==============================================================================

Each function takes a :class:`~ddimkit.pipeline.Pipeline` (``schedule`` takes none, ``noising`` may take
``None``), the output folder and its options, and returns the numbers it wrote to ``NAME.json``.
``ddimkit explore NAME`` runs them from the command line; :func:`run` dispatches by name.
"""

from __future__ import annotations

from typing import Callable

from .common import ALPHAS, SCHEDULES
from .forward import noising, schedule
from .inversion import interpolation, reconstruction
from .sampling import determinism, eta_vs_ddpm, steps_grid, trajectory, variance_precision

__all__ = ["EXPERIMENTS", "SCHEDULES", "ALPHAS", "run", "schedule", "noising", "trajectory", "eta_vs_ddpm",
           "variance_precision", "steps_grid", "determinism", "reconstruction", "interpolation"]


EXPERIMENTS: dict[str, Callable[..., dict]] = {
    "schedule": schedule, "noising": noising, "trajectory": trajectory, "eta-vs-ddpm": eta_vs_ddpm,
    "steps-grid": steps_grid, "determinism": determinism, "reconstruction": reconstruction,
    "interpolation": interpolation,
}


def run(name: str, pipe, out, **options) -> dict:
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`); ``pipe`` may be ``None`` for schedule/noising."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if name == "schedule":
        return schedule(out, **options)
    if pipe is None and name != "noising":
        raise ValueError(f"{name} needs a model (--ckpt)")
    return EXPERIMENTS[name](pipe, out, **options)
