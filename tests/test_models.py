"""Tests of ddimkit.models: architecture parity with diffusers' UNet2DModel, presets, config and
state-dict mapping, and the speed-related requirements (autocast, channels_last, torch.compile)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from ddimkit.models import (
    MODEL_CLASSES, PRESETS, BasicUNet, UNet, convert_diffusers_state_dict, count_parameters, create_model,
    diffusers_config_from_unet, model_from_config, unet_kwargs_from_diffusers,
)
from ddimkit.models.diffusers_format import DIFFUSERS_UNET2D_DEFAULTS
from ddimkit.models.unet import UNET_DEFAULTS

EXPECTED_PARAMS = {
    "basic-unet": 309_057,
    "mnist": 1_707_009,
    "ddpm-cifar10": 35_746_307,
    "ddpm-256": 113_673_219,
}

# google/ddpm-cifar10-32's unet/config.json and google/ddpm-cat-256's (celebahq/church/bedroom are the same).
GOOGLE_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
GOOGLE_256_CONFIG = {
    **GOOGLE_CIFAR10_CONFIG, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}

# Small configurations exercising every option the UNet supports.
OPTION_CONFIGS = {
    "scale-shift": dict(
        in_channels=2, out_channels=3, block_out_channels=(32, 48), layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=8, attention_head_dim=12, resnet_time_scale_shift="scale_shift",
        mid_block_scale_factor=2 ** 0.5, center_input_sample=True, time_embedding_dim=40, freq_shift=1,
        flip_sin_to_cos=False, downsample_padding=0),
    "odd-widths": dict(
        in_channels=1, out_channels=1, block_out_channels=(15, 30), layers_per_block=2,
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=5, attention_head_dim=10, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=3,
        norm_eps=1e-3),
    "no-mid": dict(
        in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("UNetResDownBlock2D", "DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",) * 3,
        norm_num_groups=8, mid_block_type=None),
    "mid-no-attention": dict(
        in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, add_attention=False, attention_head_dim=None),
}


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _diffusers_kwargs(model: UNet) -> dict:
    return {k: v for k, v in diffusers_config_from_unet(model).items() if not k.startswith("_")}


def _randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with seeded random values well away from the init (norm scales ≠ 1, biases ≠ 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def _pair(diffusers, config: dict) -> tuple[UNet, torch.nn.Module]:
    """A randomised diffusers UNet2DModel and our UNet holding the same weights (loaded strictly)."""
    with torch.device("meta"):
        ours = UNet(**config)
        ref = diffusers.UNet2DModel(**_diffusers_kwargs(ours))
    ref = _randomize_(ref.to_empty(device="cpu")).eval()
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ours.eval(), ref


def _preset_config(name: str) -> dict:
    with torch.device("meta"):
        return create_model(name).config


# --------------------------------------------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts(name, diffusers):
    with torch.device("meta"):
        model = create_model(name)
        assert count_parameters(model) == EXPECTED_PARAMS[name]
        if isinstance(model, UNet):
            ref = diffusers.UNet2DModel(**_diffusers_kwargs(model))
            assert count_parameters(ref) == EXPECTED_PARAMS[name]
            # Same names, shapes and order, so saved state dicts are interchangeable file for file.
            assert [(k, v.shape) for k, v in model.state_dict().items()] == \
                   [(k, v.shape) for k, v in ref.state_dict().items()]


def test_tiny_preset_matches_diffusers_layout(diffusers):
    with torch.device("meta"):
        model = create_model("tiny")
        ref = diffusers.UNet2DModel(**_diffusers_kwargs(model))
    assert count_parameters(model) == count_parameters(ref) == 173_209
    assert [(k, v.shape) for k, v in model.state_dict().items()] == \
           [(k, v.shape) for k, v in ref.state_dict().items()]


@pytest.mark.parametrize("name,size", [("mnist", 28), ("small", 28), ("ddpm-cifar10", 32), ("ddpm-256", 32)])
def test_forward_parity_presets(name, size, diffusers):
    ours, ref = _pair(diffusers, _preset_config(name))
    torch.manual_seed(0)
    x = torch.randn(2, ours.config["in_channels"], size, size)
    t = torch.tensor([3, 917])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = ours(x, t)
    assert got.shape == expected.shape == x.shape
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(OPTION_CONFIGS))
def test_forward_parity_options(name, diffusers):
    ours, ref = _pair(diffusers, OPTION_CONFIGS[name])
    torch.manual_seed(1)
    x = torch.randn(2, ours.config["in_channels"], 16, 16)
    for t in (torch.tensor([0.5, 731.25]), torch.tensor(411), 250):
        with torch.no_grad():
            expected = ref(x, t).sample
            got = ours(x, t)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


def test_timestep_forms_agree():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        full = model(x, torch.full((3,), 123, dtype=torch.long))
        assert torch.equal(model(x, torch.tensor(123)), full)
        assert torch.equal(model(x, 123), full)
        assert torch.equal(model(x, torch.full((3,), 123.0)), full)
        assert not torch.allclose(model(x, torch.full((3,), 124)), full)


def test_basic_unet():
    torch.manual_seed(0)
    model = create_model("basic-unet")
    assert isinstance(model, BasicUNet) and count_parameters(model) == 309_057
    x = torch.randn(2, 1, 28, 28)
    out = model(x, torch.tensor([1, 2]))
    assert out.shape == x.shape
    assert torch.equal(out, model(x))
    rgb = create_model("basic-unet", in_channels=3, out_channels=2)
    assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    rebuilt = BasicUNet(**json.loads(json.dumps(rgb.config)))
    assert rebuilt.config == rgb.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in rgb.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------
# Presets


def test_preset_defaults():
    assert set(PRESETS) == {"basic-unet", "mnist", "tiny", "small", "ddpm-cifar10", "ddpm-256"}
    with torch.device("meta"):
        for name, channels, size in [("basic-unet", 1, 28), ("mnist", 1, 28), ("tiny", 1, 28), ("small", 1, 28),
                                     ("ddpm-cifar10", 3, 32), ("ddpm-256", 3, 256)]:
            config = create_model(name).config
            assert (config["in_channels"], config["out_channels"], config["sample_size"]) == (channels, channels, size)
        config = create_model("tiny", in_channels=3, sample_size=32, dropout=0.1).config
        assert (config["in_channels"], config["out_channels"], config["sample_size"], config["dropout"]) == \
               (3, 3, 32, 0.1)
        assert create_model("mnist", out_channels=2).config["out_channels"] == 2


def test_google_configs_match_presets():
    assert unet_kwargs_from_diffusers(GOOGLE_CIFAR10_CONFIG) == _preset_config("ddpm-cifar10")
    assert unet_kwargs_from_diffusers(GOOGLE_256_CONFIG) == _preset_config("ddpm-256")


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose one of .*ddpm-cifar10"):
        create_model("nope")


def test_model_from_config():
    model = create_model("tiny")
    rebuilt = model_from_config(type(model).__name__, json.loads(json.dumps(model.config)))
    assert isinstance(rebuilt, UNet) and rebuilt.config == model.config
    assert isinstance(model_from_config("BasicUNet", create_model("basic-unet").config), BasicUNet)
    assert set(MODEL_CLASSES) == {"UNet", "BasicUNet"}
    with pytest.raises(ValueError, match="Transformer"):
        model_from_config("Transformer", {})


# --------------------------------------------------------------------------------------------------------------
# diffusers format


def test_defaults_match_diffusers(diffusers):
    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    theirs = {k: list(p.default) if isinstance(p.default, tuple) else p.default
              for k, p in params.items() if k != "self"}
    assert DIFFUSERS_UNET2D_DEFAULTS == theirs
    assert {k: theirs[k] for k in UNET_DEFAULTS} == UNET_DEFAULTS


def test_old_attention_naming(diffusers):
    ours, ref = _pair(diffusers, _preset_config("mnist"))
    new_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old = {}
    for key, value in ref.state_dict().items():
        for new, previous in new_names.items():
            key = key.replace(new, previous)
        old[key] = value
    assert any(".proj_attn." in k for k in old) and not any(".to_q." in k for k in old)
    converted = convert_diffusers_state_dict(old)
    assert list(converted) == list(ref.state_dict())
    assert convert_diffusers_state_dict(converted) == converted
    with torch.device("meta"):
        fresh = UNet(**ours.config)
    fresh.load_state_dict(converted, strict=True, assign=True)
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x, torch.tensor([5])), ours(x, torch.tensor([5])))


@pytest.mark.parametrize("name", ["mnist", "tiny", "ddpm-cifar10"] + sorted(OPTION_CONFIGS))
def test_config_round_trips(name, diffusers):
    config = OPTION_CONFIGS.get(name) or _preset_config(name)
    with torch.device("meta"):
        model = UNet(**config)
        rebuilt = UNet(**json.loads(json.dumps(model.config)))
        assert rebuilt.config == model.config
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
               {k: v.shape for k, v in model.state_dict().items()}
        exported = diffusers_config_from_unet(model)
        assert exported["_class_name"] == "UNet2DModel"
        assert json.loads(json.dumps(exported)) == exported
        assert unet_kwargs_from_diffusers(exported) == model.config
        assert diffusers_config_from_unet(model.config) == exported
        ref = diffusers.UNet2DModel(**{k: v for k, v in exported.items() if not k.startswith("_")})
    sd = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    ref.load_state_dict(sd, strict=True, assign=True)


def test_diffusers_from_pretrained_loads_our_export(diffusers, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = _randomize_(create_model("mnist")).eval()
    (tmp_path / "config.json").write_text(json.dumps(diffusers_config_from_unet(model)))
    save_file(model.state_dict(), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ref = diffusers.UNet2DModel.from_pretrained(str(tmp_path)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    with torch.no_grad():
        assert (ref(x, t).sample - model(x, t)).abs().max().item() <= 1e-5


def test_config_from_diffusers_bookkeeping():
    config = {**GOOGLE_CIFAR10_CONFIG, "_name_or_path": "google/ddpm-cifar10-32", "downsample_type": "conv",
              "upsample_type": None, "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": 1000,
              "some_future_option": None}
    assert unet_kwargs_from_diffusers(config) == _preset_config("ddpm-cifar10")
    # diffusers resets the fields listed in _use_default_values to their defaults when loading.
    reset = unet_kwargs_from_diffusers({**GOOGLE_CIFAR10_CONFIG, "_use_default_values": ["norm_eps"]})
    assert reset["norm_eps"] == 1e-5
    # Missing fields take diffusers' defaults.
    assert unet_kwargs_from_diffusers({"_class_name": "UNet2DModel"}) == UNET_DEFAULTS


@pytest.mark.parametrize("field,value", [
    ("_class_name", "UNet2DConditionModel"),
    ("class_embed_type", "timestep"),
    ("time_embedding_type", "fourier"),
    ("down_block_types", ["DownBlock2D", "SkipDownBlock2D", "DownBlock2D", "DownBlock2D"]),
    ("up_block_types", ["UpBlock2D", "UpBlock2D", "AttnSkipUpBlock2D", "UpBlock2D"]),
    ("down_block_types", ["UpBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]),
    ("downsample_type", "resnet"),
    ("upsample_type", "resnet"),
    ("resnet_time_scale_shift", "spatial"),
    ("act_fn", "gelu"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("cross_attention_dim", 768),
])
def test_unsupported_diffusers_configs(field, value):
    with pytest.raises(ValueError, match=field):
        unet_kwargs_from_diffusers({**GOOGLE_CIFAR10_CONFIG, field: value})


@pytest.mark.parametrize("field,value", [
    ("time_embedding_type", "learned"),
    ("act_fn", "mish"),
    ("resnet_time_scale_shift", "ada_group"),
    ("down_block_types", ("CrossAttnDownBlock2D", "DownBlock2D")),
    ("block_out_channels", (32, 64, 64)),
    ("layers_per_block", 0),
])
def test_unsupported_unet_arguments(field, value):
    kwargs = dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match=field):
        with torch.device("meta"):
            UNet(**{**kwargs, field: value})
    with pytest.raises(ValueError, match="unknown UNet config field"):
        diffusers_config_from_unet({**kwargs, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="BasicUNet"):
        diffusers_config_from_unet(BasicUNet())


def test_attention_head_dim_larger_than_channels():
    with pytest.raises(ValueError, match="attention_head_dim"):
        UNet(block_out_channels=(16, 32), down_block_types=("AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=64)


# --------------------------------------------------------------------------------------------------------------
# Speed-related requirements


@pytest.fixture(scope="module")
def mnist_unet():
    torch.manual_seed(0)
    return _randomize_(create_model("mnist"), seed=3).eval()


def test_bf16_autocast(mnist_unet):
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([7, 700])
    with torch.no_grad():
        full = mnist_unet(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = mnist_unet(x, t)
    assert half.shape == full.shape and torch.isfinite(half).all()
    assert (half.float() - full).abs().max().item() <= 0.05 * full.abs().max().item()


def test_channels_last(mnist_unet):
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([7, 700])
    with torch.no_grad():
        expected = mnist_unet(x, t)
        model = create_model("mnist").eval()
        model.load_state_dict(mnist_unet.state_dict())
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last), t)
    assert (got - expected).abs().max().item() <= 1e-5


def test_torch_compile_fullgraph(mnist_unet):
    torch._dynamo.reset()
    compiled = torch.compile(mnist_unet, fullgraph=True, backend="eager")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([7, 700])
    with torch.no_grad():
        assert (compiled(x, t) - mnist_unet(x, t)).abs().max().item() <= 1e-5


def test_attention_in_bf16_on_the_cpu_matches_the_fused_kernel():
    """The written-out bf16 attention (the CPU's fast path for training) agrees with scaled_dot_product_attention,
    forward and backward, to bf16's rounding; in fp32 it is the fused kernel itself."""
    from torch.nn import functional as F

    from ddimkit.models.unet import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 49, 16, generator=g) for _ in range(3))
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in)
    ref.square().sum().backward()
    low_in = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    low = attention(*low_in)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=3e-2)
    low.float().square().sum().backward()
    for a, b in zip(low_in, ref_in):
        assert (a.grad.float() - b.grad).norm() < 0.03 * b.grad.norm()
