"""diffusers pipeline folders and hub ids: load them as a :class:`~ddimkit.pipeline.Pipeline`, and export ours.

A diffusers unconditional pipeline folder holds::

    model_index.json
    unet/config.json + unet/diffusion_pytorch_model.safetensors (or .bin)
    scheduler/scheduler_config.json

The UNet's weights go into ddimkit's own :class:`~ddimkit.models.UNet` (same layout; the older attention
names are renamed); the scheduler config becomes the noise schedule, the prediction type and the sampling
defaults. What ddimkit cannot represent faithfully is refused with one line naming the field.

An exported folder also holds ``ddimkit.json``: what diffusers' format has no field for (a class-conditional
model's class count and null label, the guidance scale, and whether ε̂ is re-derived from the clipped x̂0),
so that a model exported and loaded back samples as before. diffusers ignores the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .checkpoint import atomic_write, load_safetensors, read_json, write_json
from .schedule import NoiseSchedule

__all__ = ["is_hub_id", "resolve_folder", "load_diffusers", "schedule_from_scheduler_config",
           "scheduler_config_from", "export_diffusers", "SUPPORTED_SCHEDULERS", "SUPPORTED_PIPELINES"]

SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler")
SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline", "PNDMPipeline")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                   "sigmoid": "sigmoid"}

# Scheduler-config fields and the values ddimkit's samplers reproduce; anything else is refused by name.
_SCHEDULER_FIELDS = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "variance_type",
    "clip_sample", "clip_sample_range", "prediction_type", "thresholding", "dynamic_thresholding_ratio",
    "sample_max_value", "timestep_spacing", "steps_offset", "set_alpha_to_one", "rescale_betas_zero_snr",
    "skip_prk_steps",  # PNDM's: ddimkit runs its own samplers over the same schedule
}
_SCHEDULER_NEUTRAL = {"timestep_type": ("discrete",), "skip_prk_steps": (True, False)}
EXTRAS_FILE = "ddimkit.json"
_EXTRA_SAMPLING = ("guidance_scale", "use_clipped_model_output")


def is_hub_id(text: str) -> bool:
    """``owner/name`` with no local path of that name: a Hugging Face hub id."""
    return bool(_HUB_ID.match(text)) and not Path(text).exists()


def resolve_folder(path_or_id: str) -> Path:
    """A local pipeline folder, or a hub id fetched into (or found in) the Hugging Face cache."""
    p = Path(path_or_id)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{p} is a file; give a diffusers pipeline folder or a ddimkit run folder")
        return p
    if not is_hub_id(path_or_id):
        raise FileNotFoundError(f"no such checkpoint or run folder: {path_or_id}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError("loading a hub id needs huggingface_hub (pip install huggingface_hub)") from None
    patterns = ["*.json", "unet/*.safetensors", "unet/*.bin"]
    try:
        return Path(snapshot_download(path_or_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(path_or_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise FileNotFoundError(
            f"no local folder {path_or_id!r}, and the hub id is not in the Hugging Face cache and could not be "
            f"downloaded ({type(e).__name__}: {reason}); on a connected machine run "
            f"`huggingface-cli download {path_or_id} --local-dir DIR` and pass --ckpt DIR") from None


def _read_unet_weights(unet_dir: Path) -> dict[str, torch.Tensor]:
    st = unet_dir / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        return load_safetensors(st)
    bin_ = unet_dir / "diffusion_pytorch_model.bin"
    if bin_.is_file():
        try:
            sd = torch.load(bin_, map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"refusing {bin_}: it is not a weights-only file that can be read safely ({first})") \
                from None
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            raise ValueError(f"{bin_} does not hold a state dict of tensors")
        return sd
    raise FileNotFoundError(f"missing weights: {unet_dir}/diffusion_pytorch_model.safetensors (or .bin)")


def schedule_from_scheduler_config(cfg: dict) -> tuple[NoiseSchedule, str, dict]:
    """A diffusers scheduler config → (schedule, prediction type, sampling defaults).

    Raises ValueError naming the field for a scheduler class or setting ddimkit cannot reproduce
    (learned variances, unknown beta schedules, unknown fields with non-default values).
    """
    cls = cfg.get("_class_name", "DDPMScheduler")
    if cls not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"scheduler _class_name={cls!r} is not supported (ddimkit reads {', '.join(SUPPORTED_SCHEDULERS)})")
    for key, value in cfg.items():
        if key.startswith("_") or key in _SCHEDULER_FIELDS:
            continue
        if value is None or value in _SCHEDULER_NEUTRAL.get(key, ()) or value is False:
            continue
        raise ValueError(f"scheduler field {key}={value!r} is not supported")
    variance = cfg.get("variance_type", "fixed_small") or "fixed_small"
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"scheduler field variance_type={variance!r} (a learned or log variance) is not supported")
    T = int(cfg.get("num_train_timesteps", 1000))
    rescale = bool(cfg.get("rescale_betas_zero_snr", False))
    if cfg.get("trained_betas") is not None:
        schedule = NoiseSchedule.from_betas(cfg["trained_betas"], rescale_zero_terminal_snr=rescale)
    else:
        name = cfg.get("beta_schedule", "linear")
        if name not in _BETA_SCHEDULES:
            raise ValueError(f"scheduler field beta_schedule={name!r} is not supported")
        kind = _BETA_SCHEDULES[name]
        kw = {} if kind == "cosine" else dict(beta_start=float(cfg.get("beta_start", 1e-4)),
                                              beta_end=float(cfg.get("beta_end", 0.02)))
        schedule = NoiseSchedule.from_name(kind, T, rescale_zero_terminal_snr=rescale, **kw)
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"scheduler field prediction_type={prediction!r} is not supported")
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"scheduler field timestep_spacing={spacing!r} is not supported")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", cls != "PNDMScheduler") else None
    sampling = dict(
        clip_sample=clip,
        thresholding=float(cfg.get("dynamic_thresholding_ratio", 0.995)) if cfg.get("thresholding") else None,
        sample_max_value=float(cfg.get("sample_max_value", 1.0)),
        spacing=spacing,
        steps_offset=int(cfg.get("steps_offset", 0)),
        set_alpha_to_one=bool(cfg.get("set_alpha_to_one", True)),
        variance="large" if variance == "fixed_large" else "small",
        use_clipped_model_output=False,
    )
    return schedule, prediction, sampling


def load_diffusers(path_or_id: str, device=None, precision: str = "fp32"):
    """Load a diffusers unconditional pipeline folder or hub id as a ddimkit :class:`Pipeline`."""
    from .models import UNet, convert_diffusers_state_dict, unet_kwargs_from_diffusers
    from .loading import default_device, load_weights
    from .pipeline import Pipeline

    folder = resolve_folder(path_or_id)
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = read_json(index_path)
        cls = index.get("_class_name")
        if cls not in SUPPORTED_PIPELINES:
            extra = [k for k in index if not k.startswith("_") and k not in ("unet", "scheduler")]
            raise ValueError(f"model_index.json: _class_name={cls!r} is not supported (ddimkit reads unconditional "
                             f"{', '.join(SUPPORTED_PIPELINES)}" + (f"; this one also has {', '.join(extra)})" if extra
                                                                   else ")"))
    unet_cfg = read_json(folder / "unet" / "config.json")
    try:
        kwargs = unet_kwargs_from_diffusers(unet_cfg)
    except ValueError as e:
        raise ValueError(f"unet/config.json: {e}") from None
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if not sched_path.is_file():
        raise FileNotFoundError(f"missing file: {sched_path}")
    try:
        schedule, prediction, sampling = schedule_from_scheduler_config(read_json(sched_path))
    except ValueError as e:
        raise ValueError(f"scheduler/scheduler_config.json: {e}") from None
    model = UNet(**kwargs)
    load_weights(model, convert_diffusers_state_dict(_read_unet_weights(folder / "unet")), folder / "unet")
    device = torch.device(device) if device is not None else default_device()
    extras = read_json(folder / EXTRAS_FILE) if (folder / EXTRAS_FILE).is_file() else {}
    sampling.update({k: v for k, v in (extras.get("sampling") or {}).items() if k in _EXTRA_SAMPLING})
    config = {"model": {"name": "diffusers", "class": "UNet", "config": model.config},
              "schedule": schedule.config, "prediction_type": prediction, "sampling": sampling,
              "source": {"diffusers": str(path_or_id)},
              **{k: extras[k] for k in ("num_classes", "null_label") if extras.get(k) is not None}}
    return Pipeline(model.to(device), schedule, prediction, config, sampling, precision)


def scheduler_config_from(schedule: NoiseSchedule, prediction_type: str, sampling: dict) -> dict:
    """DDPMScheduler config (diffusers' field names) for a ddimkit schedule and sampling defaults."""
    c = schedule.config
    cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": schedule.num_train_timesteps}
    kind = c.get("kind")
    if kind in ("linear", "scaled_linear", "sigmoid"):
        cfg.update(beta_schedule=kind, beta_start=c["beta_start"], beta_end=c["beta_end"])
    elif kind == "cosine" and c.get("s") == 0.008 and c.get("max_beta") == 0.999:
        cfg.update(beta_schedule="squaredcos_cap_v2")
    else:  # any other schedule travels as its betas (before the zero-SNR rescale, which is a flag)
        betas = NoiseSchedule.from_config({**c, "rescale_zero_terminal_snr": False}).betas
        cfg.update(beta_schedule="linear", trained_betas=betas.tolist())
    clip = sampling.get("clip_sample")
    cfg.update(
        prediction_type=prediction_type, variance_type="fixed_large" if sampling.get("variance") == "large"
        else "fixed_small", clip_sample=clip is not None, clip_sample_range=float(clip or 1.0),
        thresholding=sampling.get("thresholding") is not None,
        dynamic_thresholding_ratio=float(sampling.get("thresholding") or 0.995),
        sample_max_value=float(sampling.get("sample_max_value", 1.0)),
        timestep_spacing=sampling.get("spacing", "leading") if sampling.get("spacing") in
        ("leading", "trailing", "linspace") else "leading",
        steps_offset=int(sampling.get("steps_offset", 0)),
        rescale_betas_zero_snr=bool(c.get("rescale_zero_terminal_snr", False)),
    )
    return cfg


def export_diffusers(pipe, out: str | Path) -> Path:
    """Write a :class:`Pipeline` as a diffusers folder that ``DDPMPipeline.from_pretrained`` loads.

    diffusers has no place for an autoguidance guide (:mod:`ddimkit.autoguidance`): the folder holds the model
    alone, and samples as ``autoguidance_scale=1`` does."""
    from safetensors.torch import save_file

    from . import __version__
    from .models import UNet, diffusers_config_from_unet

    model = pipe.model
    if not isinstance(model, UNet):
        raise ValueError(f"only UNet models can be exported to diffusers, not {type(model).__name__}")
    if pipe.self_condition:
        raise ValueError("a self-conditioned model cannot be exported to diffusers: its pipelines do not feed "
                         "the model its own estimate")
    out = Path(out)
    write_json(out / "model_index.json", {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
                                          "scheduler": ["diffusers", "DDPMScheduler"],
                                          "unet": ["diffusers", "UNet2DModel"]})
    write_json(out / "unet" / "config.json", diffusers_config_from_unet(model))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "unet" / "diffusion_pytorch_model.safetensors",
                 lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(out / "scheduler" / "scheduler_config.json",
               scheduler_config_from(pipe.schedule, pipe.prediction_type, pipe.sampling))
    write_json(out / EXTRAS_FILE, {"num_classes": pipe.num_classes, "null_label": pipe.null_label,
                                   "sampling": {k: pipe.sampling[k] for k in _EXTRA_SAMPLING if k in pipe.sampling}})
    kind = ("a class-conditional UNet2DModel (num_class_embeds; diffusers' DDPMPipeline passes no labels, so "
            "call the UNet with class_labels) and a DDPMScheduler" if pipe.num_classes is not None
            else "an unconditional DDPM pipeline (UNet2DModel + DDPMScheduler)")
    (out / "README.md").write_text(f"Exported by ddimkit {__version__}: {kind}. {EXTRAS_FILE} holds what "
                                   "diffusers' format has no field for; diffusers ignores it.\n")
    return out
