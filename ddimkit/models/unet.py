"""The DDPM U-Net (Ho et al. 2020, Appendix B), laid out exactly like diffusers' ``UNet2DModel``.

Parameter names, shapes and the order of operations follow diffusers' current naming (``to_q``/``to_k``/
``to_v``/``to_out.0`` in attention blocks), so ``UNet.load_state_dict(diffusers_unet.state_dict())`` works
strictly and gives the same outputs. Only what DDPM checkpoints use is implemented: positional (sinusoidal)
timestep embeddings, SiLU, convolutional down/upsampling and the ``DownBlock2D``/``AttnDownBlock2D``/
``UpBlock2D``/``AttnUpBlock2D`` block types; anything else is refused with a ``ValueError``.

The forward pass is written for speed: no host synchronisation, attention through
``torch.nn.functional.scaled_dot_product_attention`` (written out in bf16 on a CPU: :func:`attention`), and it
traces under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNet",
    "UNET_DEFAULTS",
    "check_config",
    "ResnetBlock",
    "AttentionBlock",
    "attention",
    "Downsample",
    "Upsample",
    "DownBlock",
    "UpBlock",
    "MidBlock",
    "TimestepEmbedding",
    "timestep_embedding",
    "DOWN_BLOCK_TYPES",
    "UP_BLOCK_TYPES",
]

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)
ACTIVATIONS = ("silu", "swish")  # diffusers maps both names to SiLU
TIME_SCALE_SHIFTS = ("default", "scale_shift")


def _block_kind(block_type: str, field: str, allowed: Sequence[str]) -> str:
    """Validate a block type name; diffusers also accepts a legacy ``UNetRes`` prefix (``UNetResDownBlock2D``)."""
    name = block_type
    if isinstance(name, str) and name.startswith("UNetRes"):
        name = name[len("UNetRes"):]
    if name not in allowed:
        raise ValueError(f"unsupported {field} entry {block_type!r}; supported: {', '.join(allowed)}")
    return name


def _heads(channels: int, head_dim: int) -> int:
    """Number of attention heads, ``channels // head_dim`` as diffusers computes it."""
    heads = channels // head_dim
    if heads < 1:
        raise ValueError(f"attention_head_dim {head_dim} is larger than the {channels} channels it attends over")
    return heads


def _attention_stack(
    channels: int, head_dim: int | None, count: int, groups: int | None, eps: float, rescale: float = 1.0
) -> nn.ModuleList | None:
    """``count`` attention blocks of ``channels // head_dim`` heads, or `None` when ``head_dim`` is `None`."""
    if head_dim is None:
        return None
    heads = _heads(channels, head_dim)
    return nn.ModuleList(AttentionBlock(channels, heads, head_dim, groups, eps, rescale) for _ in range(count))


def _validate(
    *,
    time_embedding_type: str,
    act_fn: str,
    resnet_time_scale_shift: str,
    mid_block_type: str | None,
    norm_num_groups: int | None,
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    block_out_channels: Sequence[int],
    layers_per_block: int,
) -> tuple[list[str], list[str]]:
    """Refuse what the UNet cannot represent; return the canonical down and up block kinds."""
    if time_embedding_type != "positional":
        raise ValueError(f"unsupported time_embedding_type {time_embedding_type!r}; only 'positional' is supported")
    if act_fn not in ACTIVATIONS:
        raise ValueError(f"unsupported act_fn {act_fn!r}; only 'silu' is supported")
    if resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
        raise ValueError(
            f"unsupported resnet_time_scale_shift {resnet_time_scale_shift!r}; supported: default, scale_shift")
    if mid_block_type not in MID_BLOCK_TYPES:
        raise ValueError(f"unsupported mid_block_type {mid_block_type!r}; supported: 'UNetMidBlock2D' or None")
    if not isinstance(norm_num_groups, int) or norm_num_groups < 1:
        raise ValueError(f"norm_num_groups must be a positive integer, got {norm_num_groups!r}")
    if not isinstance(layers_per_block, int) or layers_per_block < 1:
        raise ValueError(f"layers_per_block must be a positive integer, got {layers_per_block!r}")
    down_kinds = [_block_kind(t, "down_block_types", DOWN_BLOCK_TYPES) for t in down_block_types]
    up_kinds = [_block_kind(t, "up_block_types", UP_BLOCK_TYPES) for t in up_block_types]
    levels = len(block_out_channels)
    if levels == 0 or len(down_kinds) != levels or len(up_kinds) != levels:
        raise ValueError(
            f"block_out_channels, down_block_types and up_block_types must have the same non-zero length, got "
            f"{levels}, {len(down_kinds)} and {len(up_kinds)}")
    return down_kinds, up_kinds


def check_config(config: dict) -> dict:
    """Validate UNet constructor arguments without building the network.

    Returns the complete argument dict (missing ones filled with the defaults, sequences as lists). Raises
    ``ValueError`` naming the offending field for anything the UNet cannot represent, and for unknown fields.
    """
    unknown = sorted(set(config) - set(UNET_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown UNet config field(s): {', '.join(unknown)}")
    full = {**UNET_DEFAULTS, **config}
    full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    _validate(**{k: full[k] for k in (
        "time_embedding_type", "act_fn", "resnet_time_scale_shift", "mid_block_type", "norm_num_groups",
        "down_block_types", "up_block_types", "block_out_channels", "layers_per_block")})
    return full


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    r"""
    The Transformer sinusoidal position embedding of (possibly fractional) timesteps, computed in float32.

    DDPM (Ho et al. 2020, Appendix B) specifies the diffusion time ``t`` with this embedding. Frequency ``i`` of
    ``half = dim // 2`` is ``max_period ** (-i / (half - downscale_freq_shift))``; the original DDPM code used
    ``downscale_freq_shift=1`` with sines first, diffusers' default models ``0`` with cosines first.

    Args:
        timesteps (`torch.Tensor`): 1-D tensor of shape `(batch,)`.
        dim (`int`): Embedding width; an odd width gets one zero column at the end.
        flip_sin_to_cos (`bool`, *optional*, defaults to `False`): Put the cosines before the sines.
        downscale_freq_shift (`float`, *optional*, defaults to 1.0): Shift of the frequency denominator.
        max_period (`float`, *optional*, defaults to 10000.0): Longest period of the embedding.

    Returns:
        `torch.Tensor`: float32 tensor of shape `(batch, dim)`.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    else:
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    r"""
    Two-layer MLP (``linear_1``, SiLU, ``linear_2``) applied to the sinusoidal timestep embedding.

    Args:
        in_channels (`int`): Width of the sinusoidal embedding.
        time_embed_dim (`int`): Width of the hidden layer and of the output.
    """

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(emb)))


class ResnetBlock(nn.Module):
    r"""
    Pre-activation residual block: GroupNorm, SiLU, conv3×3, + timestep projection, GroupNorm, SiLU, dropout,
    conv3×3, with a 1×1 convolution on the shortcut when the channel count changes.

    DDPM (Ho et al. 2020, Appendix B) took this Wide-ResNet block from PixelCNN++, replacing weight
    normalisation by group normalisation, and adds the timestep embedding inside every residual block.

    Args:
        in_channels (`int`): Input channels.
        out_channels (`int`): Output channels.
        temb_channels (`int`): Width of the timestep embedding.
        groups (`int`, *optional*, defaults to 32): Groups of both GroupNorms.
        eps (`float`, *optional*, defaults to 1e-6): Epsilon of both GroupNorms.
        dropout (`float`, *optional*, defaults to 0.0): Dropout before the second convolution.
        time_embedding_norm (`str`, *optional*, defaults to `"default"`): `"default"` adds the projected
            embedding before the second norm; `"scale_shift"` projects to a (scale, shift) pair applied after it.
        output_scale_factor (`float`, *optional*, defaults to 1.0): The sum (shortcut + residual) is divided by it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        if time_embedding_norm not in TIME_SCALE_SHIFTS:
            raise ValueError(
                f"unsupported resnet_time_scale_shift {time_embedding_norm!r}; supported: default, scale_shift")
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        proj_channels = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
        self.time_emb_proj = nn.Linear(temb_channels, proj_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # The shortcut is projected (1×1 conv) only where the channel count changes.
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """``temb_act`` is SiLU(time embedding): the UNet applies that activation once for all blocks."""
        h = self.conv1(F.silu(self.norm1(x)))
        temb = self.time_emb_proj(temb_act)[:, :, None, None]
        if self.time_embedding_norm == "default":
            h = self.norm2(h + temb)
        else:
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1:
            out = out / self.output_scale_factor
        return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d) v over the last two dimensions.

    ``scaled_dot_product_attention`` everywhere except bf16 on a CPU, where it is written out: there the fused
    kernel's backward pass is slow on the short sequences of small UNets (the `small` preset's 49 positions;
    written out, its bf16 step is 1.2× faster: docs/training.md). The result is the same
    up to bf16 rounding (tested).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return scores.float().softmax(-1).to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    r"""
    Spatial multi-head self-attention with a residual connection: GroupNorm, q/k/v projections, scaled
    dot-product attention over the H·W positions, output projection, ``(out + x) / rescale_output_factor``.

    DDPM (Ho et al. 2020, Appendix B) puts such blocks at the 16×16 resolution, between the residual blocks.
    The parameters are named like diffusers' ``Attention`` (``group_norm``, ``to_q``, ``to_k``, ``to_v``,
    ``to_out.0``).

    Args:
        channels (`int`): Input and output channels.
        heads (`int`): Number of heads.
        head_dim (`int`): Width of each head; the projections have ``heads * head_dim`` features.
        norm_groups (`int`, *optional*): Groups of the input GroupNorm; `None` for no norm.
        eps (`float`, *optional*, defaults to 1e-6): Epsilon of the GroupNorm.
        rescale_output_factor (`float`, *optional*, defaults to 1.0): Divides the output (after the residual).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        norm_groups: int | None = 32,
        eps: float = 1e-6,
        rescale_output_factor: float = 1.0,
    ):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.rescale_output_factor = rescale_output_factor
        inner = heads * head_dim
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        # A list so that the key reads ``to_out.0`` as in diffusers (whose ``to_out.1`` is a parameterless dropout).
        self.to_out = nn.ModuleList([nn.Linear(inner, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x) if self.group_norm is not None else x
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, H·W, C)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, heads, H·W, head_dim)

        q, k, v = split(self.to_q(tokens)), split(self.to_k(tokens)), split(self.to_v(tokens))
        out = attention(q, k, v)
        out = self.to_out[0](out.transpose(1, 2).flatten(2))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        # Residual first so that the sum keeps the input's memory format.
        out = x + out
        if self.rescale_output_factor != 1:
            out = out / self.rescale_output_factor
        return out


class Downsample(nn.Module):
    r"""
    Learned 2× downsampling: a stride-2 3×3 convolution.

    With ``padding=0`` the input is first padded by one pixel on the right and bottom only, which is how the
    original DDPM (TensorFlow "SAME"-style) downsampling lines up; google/ddpm-* checkpoints rely on it.

    Args:
        channels (`int`): Input and output channels.
        padding (`int`, *optional*, defaults to 1): Symmetric padding of the convolution.
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    r"""
    Learned 2× upsampling: nearest-neighbour interpolation followed by a 3×3 convolution.

    Args:
        channels (`int`): Input and output channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    r"""
    One resolution level of the encoder (diffusers' ``DownBlock2D``, or ``AttnDownBlock2D`` when
    ``attention_head_dim`` is given): residual blocks, each optionally followed by self-attention, then an optional
    downsampler. Every block output and the downsampled tensor are kept as skip connections.

    Args:
        in_channels (`int`): Channels entering the first residual block.
        out_channels (`int`): Channels of every block's output.
        temb_channels (`int`): Width of the timestep embedding.
        num_layers (`int`): Number of residual blocks.
        add_downsample (`bool`): Append a ``Downsample`` (every level but the last).
        attention_head_dim (`int`, *optional*): Head width of the attention blocks; `None` for no attention.
        groups (`int`): GroupNorm groups. eps (`float`): GroupNorm epsilon. dropout (`float`): Residual dropout.
        time_embedding_norm (`str`): See ``ResnetBlock``. downsample_padding (`int`): See ``Downsample``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        attention_head_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
        downsample_padding: int = 1,
    ):
        super().__init__()
        # Attentions are registered before the resnets so that state-dict keys come in diffusers' order.
        self.attentions = _attention_stack(out_channels, attention_head_dim, num_layers, groups, eps)
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps, dropout,
                        time_embedding_norm)
            for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb_act)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    r"""
    One resolution level of the decoder (diffusers' ``UpBlock2D``, or ``AttnUpBlock2D`` when
    ``attention_head_dim`` is given). Each residual block takes the running tensor concatenated (on channels)
    with the most recent unused skip connection; an optional upsampler follows.

    Args:
        in_channels (`int`): Channels of the skip consumed by the last residual block (the output width of the
            encoder level below, or of this level for the lowest one).
        prev_output_channel (`int`): Channels of the tensor entering the block.
        out_channels (`int`): Channels of every block's output, and of the other skips it consumes.
        temb_channels (`int`): Width of the timestep embedding.
        num_layers (`int`): Number of residual blocks (``layers_per_block + 1``).
        add_upsample (`bool`): Append an ``Upsample`` (every level but the last).
        attention_head_dim (`int`, *optional*): Head width of the attention blocks; `None` for no attention.
        groups (`int`): GroupNorm groups. eps (`float`): GroupNorm epsilon. dropout (`float`): Residual dropout.
        time_embedding_norm (`str`): See ``ResnetBlock``.
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        attention_head_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
    ):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            running_channels = prev_output_channel if i == 0 else out_channels
            resnets.append(ResnetBlock(running_channels + skip_channels, out_channels, temb_channels, groups, eps,
                                       dropout, time_embedding_norm))
        self.attentions = _attention_stack(out_channels, attention_head_dim, num_layers, groups, eps)
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb_act: torch.Tensor) -> torch.Tensor:
        """Consumes ``len(self.resnets)`` tensors from the end of ``skips`` (popped in place)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb_act)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    r"""
    The bottleneck at the lowest resolution: residual block, self-attention, residual block (diffusers'
    ``UNetMidBlock2D`` with one layer). ``output_scale_factor`` divides the output of all three.

    Args:
        channels (`int`): Input and output channels.
        temb_channels (`int`): Width of the timestep embedding.
        attention_head_dim (`int`, *optional*): Head width of the attention; `None` for no attention.
        groups (`int`): GroupNorm groups of the residual blocks.
        attn_groups (`int`, *optional*): GroupNorm groups of the attention; `None` for no norm there.
        eps (`float`): GroupNorm epsilon. dropout (`float`): Residual dropout.
        time_embedding_norm (`str`): See ``ResnetBlock``. output_scale_factor (`float`): See above.
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        attention_head_dim: int | None,
        groups: int = 32,
        attn_groups: int | None = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.attentions = _attention_stack(channels, attention_head_dim, 1, attn_groups, eps, output_scale_factor)
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, temb_channels, groups, eps, dropout, time_embedding_norm,
                        output_scale_factor)
            for _ in range(2)
        )

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb_act)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, temb_act)


class UNet(nn.Module):
    r"""
    The DDPM U-Net (Ho et al. 2020, Appendix B): a PixelCNN++-style U-Net of Wide-ResNet blocks with GroupNorm,
    self-attention at chosen resolutions and the sinusoidal timestep embedding added in every residual block.

    It mirrors diffusers' ``UNet2DModel``: same constructor arguments and defaults, same parameter names (the
    current ``to_q``/``to_k``/``to_v``/``to_out.0`` attention naming), same outputs. ``forward(x, t)`` returns
    a plain tensor.

    Parameters:
        sample_size (`int` or `tuple[int, int]`, *optional*, defaults to `None`): Height and width of the
            samples; metadata only (any size divisible by ``2 ** (len(block_out_channels) - 1)`` works).
        in_channels (`int`, *optional*, defaults to 3): Channels of the input sample.
        out_channels (`int`, *optional*, defaults to 3): Channels of the output.
        center_input_sample (`bool`, *optional*, defaults to `False`): Map the input x to 2x - 1 first.
        time_embedding_type (`str`, *optional*, defaults to `"positional"`): Only `"positional"` is supported.
        time_embedding_dim (`int`, *optional*, defaults to `None`): Width of the timestep embedding MLP;
            `None` means ``4 * block_out_channels[0]``.
        freq_shift (`int`, *optional*, defaults to 0): ``downscale_freq_shift`` of the sinusoidal embedding
            (1 in the original DDPM models).
        flip_sin_to_cos (`bool`, *optional*, defaults to `True`): Cosines before sines in the sinusoidal
            embedding (`False` in the original DDPM models).
        down_block_types (`tuple[str]`, *optional*, defaults to `("DownBlock2D", "AttnDownBlock2D",
            "AttnDownBlock2D", "AttnDownBlock2D")`): One of `"DownBlock2D"`, `"AttnDownBlock2D"` per level.
        mid_block_type (`str`, *optional*, defaults to `"UNetMidBlock2D"`): `"UNetMidBlock2D"` or `None` (no
            mid block).
        up_block_types (`tuple[str]`, *optional*, defaults to `("AttnUpBlock2D", "AttnUpBlock2D",
            "AttnUpBlock2D", "UpBlock2D")`): One of `"UpBlock2D"`, `"AttnUpBlock2D"` per level, lowest first.
        block_out_channels (`tuple[int]`, *optional*, defaults to `(224, 448, 672, 896)`): Channels per level.
        layers_per_block (`int`, *optional*, defaults to 2): Residual blocks per encoder level (the decoder
            levels have one more).
        mid_block_scale_factor (`float`, *optional*, defaults to 1): Output scale factor of the mid block.
        downsample_padding (`int`, *optional*, defaults to 1): Padding of the downsampling convolutions; 0
            selects the asymmetric (right/bottom) padding of the original DDPM models.
        dropout (`float`, *optional*, defaults to 0.0): Dropout in the residual blocks (DDPM used 0.1 on
            CIFAR10).
        act_fn (`str`, *optional*, defaults to `"silu"`): Only `"silu"` (alias `"swish"`) is supported.
        attention_head_dim (`int`, *optional*, defaults to 8): Width of each attention head, so a level with C
            channels has ``C // attention_head_dim`` heads; `None` means one head over all channels (DDPM).
        norm_num_groups (`int`, *optional*, defaults to 32): GroupNorm groups.
        attn_norm_num_groups (`int`, *optional*, defaults to `None`): GroupNorm groups of the mid-block
            attention. `None` means ``norm_num_groups`` with ``resnet_time_scale_shift="default"`` and no norm
            there with `"scale_shift"` (as in diffusers).
        norm_eps (`float`, *optional*, defaults to 1e-5): GroupNorm epsilon (1e-6 in the original DDPM models).
        resnet_time_scale_shift (`str`, *optional*, defaults to `"default"`): `"default"` adds the timestep
            embedding; `"scale_shift"` applies it as a scale and shift after the second GroupNorm.
        add_attention (`bool`, *optional*, defaults to `True`): Whether the mid block has attention.
        num_class_embeds (`int`, *optional*, defaults to `None`): A class-conditional network with this many
            labels (diffusers' ``class_embed_type=None``); ``forward`` then takes ``class_labels``.
    """

    def __init__(
        self,
        *,
        sample_size: int | Sequence[int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: Sequence[int] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        down_kinds, up_kinds = _validate(
            time_embedding_type=time_embedding_type, act_fn=act_fn, resnet_time_scale_shift=resnet_time_scale_shift,
            mid_block_type=mid_block_type, norm_num_groups=norm_num_groups, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels, layers_per_block=layers_per_block)
        levels = len(block_out_channels)

        self._config = {
            "sample_size": list(sample_size) if isinstance(sample_size, (list, tuple)) else sample_size,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "center_input_sample": center_input_sample,
            "time_embedding_type": time_embedding_type,
            "time_embedding_dim": time_embedding_dim,
            "freq_shift": freq_shift,
            "flip_sin_to_cos": flip_sin_to_cos,
            "down_block_types": list(down_block_types),
            "mid_block_type": mid_block_type,
            "up_block_types": list(up_block_types),
            "block_out_channels": list(block_out_channels),
            "layers_per_block": layers_per_block,
            "mid_block_scale_factor": mid_block_scale_factor,
            "downsample_padding": downsample_padding,
            "dropout": dropout,
            "act_fn": act_fn,
            "attention_head_dim": attention_head_dim,
            "norm_num_groups": norm_num_groups,
            "attn_norm_num_groups": attn_norm_num_groups,
            "norm_eps": norm_eps,
            "resnet_time_scale_shift": resnet_time_scale_shift,
            "add_attention": add_attention,
            "num_class_embeds": num_class_embeds,
        }
        self.sample_size = sample_size
        self.center_input_sample = center_input_sample
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        channels = list(block_out_channels)
        temb_channels = time_embedding_dim or 4 * channels[0]
        resnet_kwargs = dict(groups=norm_num_groups, eps=norm_eps, dropout=dropout,
                             time_embedding_norm=resnet_time_scale_shift)

        def head_dim(level_channels: int) -> int:
            # diffusers: attention_head_dim=None means a single head spanning all channels (as in DDPM).
            return attention_head_dim if attention_head_dim is not None else level_channels

        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels)
        # diffusers' class embedding (class_embed_type None): one learned vector per label, added to the
        # timestep embedding, so a label steers every residual block as the time does.
        self.class_embedding = nn.Embedding(num_class_embeds, temb_channels) if num_class_embeds else None

        # Both block lists are registered before the mid block so that state-dict keys come in diffusers' order
        # (down blocks, up blocks, mid block).
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        prev = channels[0]
        for i, kind in enumerate(down_kinds):
            self.down_blocks.append(DownBlock(
                prev, channels[i], temb_channels, layers_per_block, add_downsample=i < levels - 1,
                attention_head_dim=head_dim(channels[i]) if kind == "AttnDownBlock2D" else None,
                downsample_padding=downsample_padding, **resnet_kwargs))
            prev = channels[i]

        if mid_block_type is None:
            self.mid_block = None
        else:
            if attn_norm_num_groups is None and resnet_time_scale_shift == "default":
                attn_norm_num_groups = norm_num_groups
            self.mid_block = MidBlock(
                channels[-1], temb_channels, head_dim(channels[-1]) if add_attention else None,
                attn_groups=attn_norm_num_groups, output_scale_factor=mid_block_scale_factor, **resnet_kwargs)

        rev = channels[::-1]
        prev = rev[0]
        for i, kind in enumerate(up_kinds):
            self.up_blocks.append(UpBlock(
                rev[min(i + 1, levels - 1)], prev, rev[i], temb_channels, layers_per_block + 1,
                add_upsample=i < levels - 1,
                attention_head_dim=head_dim(rev[i]) if kind == "AttnUpBlock2D" else None, **resnet_kwargs))
            prev = rev[i]

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(channels[0], out_channels, kernel_size=3, padding=1)

    @property
    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict: ``UNet(**model.config)`` rebuilds the architecture."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Predict from a noisy batch at the given timesteps.

        Args:
            x (`torch.Tensor`): Noisy samples of shape `(batch, in_channels, height, width)`.
            t (`torch.Tensor` or `float` or `int`): Timesteps, shape `(batch,)` or a scalar (0-d tensor or
                number) used for the whole batch; integer or fractional (unlike diffusers, which truncates a
                Python float to an integer, fractional Python numbers are kept). Pass a tensor already on
                ``x.device`` to avoid a host-to-device copy.
            class_labels (`torch.Tensor`, *optional*): LongTensor of shape `(batch,)`; required by a
                class-conditional network (``num_class_embeds``), refused by any other.

        Returns:
            `torch.Tensor`: Shape `(batch, out_channels, height, width)`.
        """
        if self.center_input_sample:
            x = 2 * x - 1.0
        if torch.is_tensor(t):
            t = t.to(x.device).reshape(-1).expand(x.shape[0])
        else:
            # A fill, not a host-to-device copy of Python data, so no synchronisation on accelerators.
            t = torch.full((x.shape[0],), t, device=x.device)

        # The sinusoid is computed in float32 (its phases reach ~1000 rad) and cast to the MLP's dtype, as
        # diffusers does; autocast then handles the MLP itself.
        emb = timestep_embedding(t, self.time_embedding.linear_1.in_features, self.flip_sin_to_cos, self.freq_shift)
        emb = self.time_embedding(emb.to(self.time_embedding.linear_1.weight.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: pass class_labels")
            labels = class_labels.to(x.device).reshape(-1).expand(x.shape[0])
            emb = emb + self.class_embedding(labels).to(emb.dtype)
        elif class_labels is not None:
            raise ValueError("this network is not class-conditional; it takes no class_labels")
        # Every residual block applies SiLU to the embedding before its own projection; do it once here.
        temb_act = F.silu(emb)

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb_act)
            skips.extend(block_skips)
        if self.mid_block is not None:
            h = self.mid_block(h, temb_act)
        for block in self.up_blocks:
            h = block(h, skips, temb_act)

        return self.conv_out(F.silu(self.conv_norm_out(h)))


#: The UNet's constructor defaults (identical to diffusers' ``UNet2DModel`` defaults), sequences as lists.
UNET_DEFAULTS = {
    name: list(p.default) if isinstance(p.default, tuple) else p.default
    for name, p in inspect.signature(UNet.__init__).parameters.items()
    if name != "self"
}
