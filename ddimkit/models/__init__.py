"""Denoising networks: the DDPM :class:`UNet` (diffusers ``UNet2DModel`` layout), the toy :class:`BasicUNet`,
named presets, and the mapping to and from diffusers' config and state-dict formats.

    from ddimkit.models import create_model
    net = create_model("tiny")                 # 1×28×28, trains on a CPU in minutes
    eps = net(x_t, t)                          # t: LongTensor (B,) or a scalar
"""

from .basic_unet import BasicUNet
from .diffusers_format import convert_diffusers_state_dict, diffusers_config_from_unet, unet_kwargs_from_diffusers
from .presets import MODEL_CLASSES, PRESETS, count_parameters, create_model, model_from_config
from .unet import UNet

__all__ = [
    "UNet", "BasicUNet", "create_model", "PRESETS", "MODEL_CLASSES", "model_from_config", "count_parameters",
    "unet_kwargs_from_diffusers", "diffusers_config_from_unet", "convert_diffusers_state_dict",
]
