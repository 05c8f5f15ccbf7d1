"""Mapping between diffusers' ``UNet2DModel`` (``unet/config.json`` and state dicts) and :class:`UNet`.

The parameter layout of :class:`UNet` is diffusers' own, so state dicts load without renaming; only
checkpoints saved before diffusers renamed its attention parameters (google/ddpm-* among them) need
:func:`convert_diffusers_state_dict`. Configs are translated field by field, refusing anything that would
not load faithfully rather than silently building a different network.
"""

from __future__ import annotations

import re
from typing import Mapping

from torch import nn

from .unet import UNET_DEFAULTS, UNet, check_config

__all__ = [
    "DIFFUSERS_UNET2D_DEFAULTS",
    "unet_kwargs_from_diffusers",
    "diffusers_config_from_unet",
    "convert_diffusers_state_dict",
]

#: ``UNet2DModel.__init__`` defaults in diffusers 0.42 (sequences as lists, as in config.json).
DIFFUSERS_UNET2D_DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# UNet2DModel fields that UNet does not take, with the values that build the same network. ``None`` for the
# resampling types is what diffusers' block factories read as "conv"; ``num_train_timesteps`` only sizes the
# table of the "learned" time embedding, so any value is harmless with the positional one.
_FIXED_FIELDS = {
    "downsample_type": ("conv", None),
    "upsample_type": ("conv", None),
    "class_embed_type": (None,),
}
_IGNORED_FIELDS = ("num_train_timesteps",)


def unet_kwargs_from_diffusers(config: Mapping) -> dict:
    """Translate a diffusers ``UNet2DModel`` config (a ``unet/config.json`` dict) into :class:`UNet` kwargs.

    Missing fields take diffusers' defaults, so the result is complete. Bookkeeping fields (``_class_name``,
    ``_diffusers_version``, ``_name_or_path``, …) are dropped; fields named in ``_use_default_values`` are
    reset to their defaults, as diffusers does when loading.

    Raises:
        ValueError: naming the field, for anything :class:`UNet` cannot represent faithfully: another
            ``_class_name``, a non-positional time embedding, unsupported block types, ``resnet``
            resampling, class embeddings other than a table of labels, other activations or time-scale-shift
            modes, and unknown fields with a value other than ``None``.
    """
    config = dict(config)
    class_name = config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise ValueError(f"_class_name {class_name!r} is not supported; only UNet2DModel configs can be loaded")
    for name in config.get("_use_default_values", ()) or ():
        config.pop(name, None)

    kwargs = {}
    for name, value in config.items():
        if name.startswith("_"):
            continue
        if name in UNET_DEFAULTS:
            kwargs[name] = value
        elif name in _FIXED_FIELDS:
            if value not in _FIXED_FIELDS[name]:
                raise ValueError(f"unsupported {name} {value!r}; supported: {_FIXED_FIELDS[name]}")
        elif name in _IGNORED_FIELDS:
            continue
        elif value is not None:
            raise ValueError(f"unknown UNet2DModel config field {name!r} = {value!r}")
    missing = {k: v for k, v in DIFFUSERS_UNET2D_DEFAULTS.items() if k in UNET_DEFAULTS and k not in kwargs}
    return check_config({**missing, **kwargs})


def diffusers_config_from_unet(unet_or_kwargs: UNet | Mapping) -> dict:
    """A diffusers ``UNet2DModel`` config dict (what ``unet/config.json`` holds) for a :class:`UNet`.

    Args:
        unet_or_kwargs: a :class:`UNet`, or its constructor kwargs (missing ones take the defaults).

    Returns:
        A JSON-able dict with ``"_class_name": "UNet2DModel"``, every field explicit.
    """
    if isinstance(unet_or_kwargs, nn.Module):
        if not isinstance(unet_or_kwargs, UNet):
            raise ValueError(f"only UNet has a diffusers equivalent, not {type(unet_or_kwargs).__name__}")
        kwargs = unet_or_kwargs.config
    else:
        kwargs = dict(unet_or_kwargs)
    full = check_config(kwargs)
    extra = {name: allowed[0] for name, allowed in _FIXED_FIELDS.items()}
    return {"_class_name": "UNet2DModel", **full, **extra}


_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def convert_diffusers_state_dict(state_dict: Mapping) -> dict:
    """Rename the old diffusers attention parameters to the current ones.

    Checkpoints written before diffusers' attention refactor (e.g. google/ddpm-cifar10-32 and the other
    google/ddpm-* models) store ``….attentions.N.query/key/value/proj_attn.{weight,bias}``; these become
    ``to_q``/``to_k``/``to_v``/``to_out.0``. Other keys, and new-style dicts, pass through unchanged.

    Returns:
        A new dict in the original key order.
    """
    out = {}
    for name, tensor in state_dict.items():
        match = _OLD_ATTENTION_KEY.match(name)
        if match is not None:
            path, old, kind = match.groups()
            name = f"{path}.{_OLD_ATTENTION_NAMES[old]}.{kind}"
        out[name] = tensor
    return out
