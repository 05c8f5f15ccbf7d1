"""Named model configurations and :func:`create_model`."""

from __future__ import annotations

from typing import Mapping

from torch import nn

from .basic_unet import BasicUNet
from .unet import UNet

__all__ = ["PRESETS", "MODEL_CLASSES", "create_model", "model_from_config", "count_parameters"]

# The original DDPM models (Ho et al. 2020, Appendix B) as released by Google on the Hugging Face hub:
# one head of attention at 16×16, GroupNorm eps 1e-6, sine-first embedding with frequency shift 1 and the
# asymmetric downsampling padding of the TensorFlow code.
_DDPM_COMMON = dict(
    layers_per_block=2,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    attention_head_dim=None,
)

# name -> (constructor, default in_channels, default sample_size, architecture kwargs)
_PRESETS: dict[str, tuple[type[nn.Module], int, int, dict]] = {
    # The toy network of the "diffusion models from scratch" tutorial.
    "basic-unet": (BasicUNet, 1, 28, {}),
    # The tutorial's UNet2DModel for MNIST: 1,707,009 parameters with one channel.
    "mnist": (UNet, 1, 28, dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )),
    # A small UNet that trains on a 2-core CPU in minutes: 28 -> 14 -> 7 with one residual block per level and
    # attention (one 32-wide head) only at 7×7; 173,209 parameters, ~36 MFLOP per 28×28 forward. Chosen by
    # measurement: the full-resolution level dominates the cost, and at equal CPU time this width gave digits
    # as good as wider variants (16-24-32, 16-32-32, 16-32-64) while training about twice as fast.
    "tiny": (UNet, 1, 28, dict(
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=32,
    )),
    # `tiny` twice as wide (16-32-64), 686,769 parameters: the default network and the shipped Fashion-MNIST
    # model's. 0.40x tiny's training speed per image on one CPU thread in fp32 (benchmarks/arch_speed.py), yet
    # at 10 CPU-minutes on Fashion-MNIST it beats tiny (KID 0.0230 against 0.0309 at min-SNR-0.25,
    # docs/training.md): textures need the width.
    "small": (UNet, 1, 28, dict(
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=32,
    )),
    # google/ddpm-cifar10-32: 35,746,307 parameters.
    "ddpm-cifar10": (UNet, 3, 32, dict(
        _DDPM_COMMON,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )),
    # google/ddpm-celebahq-256 (and -church-256, -bedroom-256, -cat-256): 113,673,219 parameters.
    "ddpm-256": (UNet, 3, 256, dict(
        _DDPM_COMMON,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )),
}

#: The names accepted by :func:`create_model`.
PRESETS: tuple[str, ...] = tuple(_PRESETS)

#: Model classes by name, for rebuilding a model from ``type(model).__name__`` and ``model.config``.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"UNet": UNet, "BasicUNet": BasicUNet}


def create_model(
    name: str,
    in_channels: int | None = None,
    out_channels: int | None = None,
    sample_size: int | None = None,
    **overrides,
) -> nn.Module:
    """Build a named model.

    Args:
        name: one of :data:`PRESETS`: ``basic-unet``, ``mnist``, ``tiny`` (1 channel, 28×28 by default),
            ``ddpm-cifar10`` (3 channels, 32×32) or ``ddpm-256`` (3 channels, 256×256).
        in_channels: input channels; the preset's default when ``None``.
        out_channels: output channels; ``in_channels`` when ``None``.
        sample_size: image size recorded in the config; the preset's default when ``None``.
        **overrides: further constructor arguments replacing the preset's (e.g. ``dropout=0.1``).

    Returns:
        A freshly initialised :class:`UNet` or :class:`BasicUNet`.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    cls, default_channels, default_size, kwargs = _PRESETS[name]
    in_channels = default_channels if in_channels is None else in_channels
    out_channels = in_channels if out_channels is None else out_channels
    sample_size = default_size if sample_size is None else sample_size
    return cls(**{**kwargs, "in_channels": in_channels, "out_channels": out_channels, "sample_size": sample_size,
                  **overrides})


def model_from_config(class_name: str, config: Mapping) -> nn.Module:
    """Rebuild a model from its class name and ``model.config`` (as saved next to a checkpoint)."""
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {class_name!r}; choose one of {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[class_name](**config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
