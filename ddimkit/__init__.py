"""ddimkit: DDPM/DDIM diffusion models — train, sample, invert, interpolate, evaluate.

    import ddimkit as dk
    s = dk.NoiseSchedule.linear()
    x0 = dk.sample(model, torch.randn(16, 1, 28, 28), s, sampler="ddim", steps=50, eta=0.0)
"""

from .diffusion import add_noise, levels, prediction_target, to_x0_eps, training_loss
from .denoiser import Denoiser, dynamic_threshold
from .interpolate import lerp, slerp
from .noise import generators_from_seeds, randn
from .samplers import invert_ddim, sample_ddim, sample_ddpm, sample_dpmpp_2m
from .sampling import SAMPLERS, ddim_invert, sample
from .schedule import NoiseSchedule, timesteps
from .models import PRESETS, create_model
from .loading import load
from .pipeline import Pipeline
from . import distributed
from .train import TrainConfig, TrainResult, train
from .data import load_images
from .toy import corrupt

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule", "timesteps", "add_noise", "levels", "to_x0_eps", "prediction_target", "training_loss",
    "Denoiser", "dynamic_threshold", "sample", "ddim_invert", "SAMPLERS", "sample_ddim", "sample_ddpm",
    "sample_dpmpp_2m", "invert_ddim", "slerp", "lerp", "randn", "generators_from_seeds", "create_model", "PRESETS",
    "Pipeline", "load", "TrainConfig", "TrainResult", "train", "load_images", "corrupt",
]
