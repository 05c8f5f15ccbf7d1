"""The toy U-Net of the "diffusion models from scratch" tutorial: six 5×5 convolutions, no timestep input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicUNet"]


class BasicUNet(nn.Module):
    r"""
    A minimal U-Net: three 5×5 convolutions down (with 2× max-pooling after the first two) and three up (with
    2× nearest upsampling before the last two), the encoder outputs added back as skips, last in first out.
    SiLU follows every convolution, the last one included, as in the tutorial.

    It has no timestep input: ``forward(x, t=None)`` ignores ``t`` so that it fits the ``model(x, t)``
    interface. With one input and one output channel it has 309,057 parameters.

    Parameters:
        in_channels (`int`, *optional*, defaults to 1): Channels of the input sample.
        out_channels (`int`, *optional*, defaults to 1): Channels of the output.
        sample_size (`int`, *optional*, defaults to `None`): Height and width of the samples; metadata only
            (any size divisible by 4 works).
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 1, sample_size: int | None = None):
        super().__init__()
        self._config = {"in_channels": in_channels, "out_channels": out_channels, "sample_size": sample_size}
        self.sample_size = sample_size
        self.down_layers = nn.ModuleList([
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
        ])
        self.up_layers = nn.ModuleList([
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, out_channels, kernel_size=5, padding=2),
        ])

    @property
    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict: ``BasicUNet(**model.config)`` rebuilds the network."""
        return dict(self._config)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Map `(batch, in_channels, H, W)` to `(batch, out_channels, H, W)`; ``t`` is ignored."""
        skips = []
        for i, conv in enumerate(self.down_layers):
            x = F.silu(conv(x))
            if i < 2:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for i, conv in enumerate(self.up_layers):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest") + skips.pop()
            x = F.silu(conv(x))
        return x
