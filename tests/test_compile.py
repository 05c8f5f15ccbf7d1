"""torch.compile with recompiles made fatal: sampling, inversion and training compile one graph each, once.

The network is a one-level UNet on 8×8 images so that TorchInductor's CPU compile stays short; a compile on
2 CPU cores still costs about 25 s for inference and 35 s for training with an empty cache (a few seconds
with the cache that :func:`ddimkit.compile_policy.use_persistent_cache` fills), and each network compiles once.
"""

import contextlib
import sys

import pytest
import torch

import ddimkit as dk
from ddimkit.compiled_net import StaticBatchNet
from ddimkit.models import create_model

SMALL = dict(block_out_channels=(8,), layers_per_block=1, down_block_types=("AttnDownBlock2D",),
             up_block_types=("AttnUpBlock2D",), norm_num_groups=4, attention_head_dim=8, mid_block_type=None)


def small_unet(seed=0):
    torch.manual_seed(seed)
    return create_model("tiny", sample_size=8, **SMALL)


@contextlib.contextmanager
def recompiles_fatal():
    """Any further compile raises: the fail_on_recompile stance (torch >= 2.6), which also refuses a first
    compile, so run the one expected compile before entering; older torch: error_on_recompile."""
    if hasattr(torch.compiler, "set_stance"):
        with torch.compiler.set_stance("fail_on_recompile"):
            yield
    else:
        with recompiles_fatal_after_first():
            yield


def recompiles_fatal_after_first():
    """A recompile raises, the first compile of each function does not (Dynamo's error_on_recompile)."""
    return torch._dynamo.config.patch(error_on_recompile=True)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Other tests may have compiled UNet.forward (its code object holds the cache): start clean."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_recompiles_are_fatal_and_padding_avoids_them():
    """The control: an unpadded ragged batch does recompile (and raises), the padded one does not.
    Dynamo alone decides recompiles, so its eager backend checks this without a slow code generation."""
    net = torch.compile(small_unet().eval(), backend="eager", dynamic=False)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 7)
    with torch.no_grad():
        net(x, t)
        for fatal in (recompiles_fatal, recompiles_fatal_after_first):
            with fatal(), pytest.raises(Exception, match="ecompil"):
                net(x[:3], t[:3])
        with recompiles_fatal():
            padded = StaticBatchNet(net, 4)
            out = padded(x[:3], t[:3])
            assert out.shape == (3, 1, 8, 8)
            assert torch.allclose(out, net(x, t)[:3], atol=1e-6)  # zero rows do not leak into the real ones


def test_sampling_and_inversion_compile_once():
    """Three samplers, two step counts, ragged batches, per-sample seeds and inversion: one compile, and
    the images equal the eager network's for the same seeds (the padding draws no extra noise)."""
    model = small_unet().eval()
    sched = dk.NoiseSchedule.linear()
    fast = dk.Pipeline(model, sched, "epsilon", compile=True)
    eager = dk.Pipeline(model, sched, "epsilon", compile=False)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731

    fast.sample(4, steps=2, batch_size=4, generator=g(0))  # the one compile
    assert compiled_graphs() == 1
    with recompiles_fatal():
        for sampler, steps, eta in (("ddim", 3, 0.0), ("ddim", 5, 1.0), ("ddpm", 3, 0.0), ("ddpm", 6, 0.0),
                                    ("dpmpp-2m", 3, 0.0), ("dpmpp-2m", 5, 0.0)):
            kw = dict(sampler=sampler, steps=steps, eta=eta, clip_sample=None)
            a = fast.sample(10, batch_size=4, generator=g(1), **kw)  # batches 4, 4 and a ragged 2
            b = eager.sample(10, batch_size=4, generator=g(1), **kw)
            assert torch.allclose(a, b, atol=1e-4), (sampler, steps, (a - b).abs().max())
        a = fast.sample(seeds=range(6), batch_size=4, sampler="ddpm", steps=4)
        b = eager.sample(seeds=range(6), batch_size=6, sampler="ddpm", steps=4)  # seeds: batch-independent
        assert torch.allclose(a, b, atol=1e-4)
        images = torch.rand(6, 1, 8, 8) * 2 - 1
        z = fast.invert(images, steps=4, batch_size=4, refine=1)
        assert torch.allclose(z, eager.invert(images, steps=4, batch_size=4, refine=1), atol=1e-4)
    assert compiled_graphs() == 1


def test_training_compiles_once(tmp_path, monkeypatch):
    """A few optimizer steps of dk.train with compile=True: the first step compiles, no step recompiles."""
    train_module = sys.modules["ddimkit.train"]  # ``ddimkit.train`` the attribute is the function
    monkeypatch.setattr(train_module, "_create_model", lambda cfg, channels, size, classes=None: small_unet(cfg.seed))
    cfg = dk.TrainConfig(data="mnist-5k", model="tiny", out=str(tmp_path / "run"), steps=4, batch_size=4,
                         image_size=8, compile=True, save_every=0, sample_every=0, log_every=1,
                         num_sample_images=0, warmup=2)
    with recompiles_fatal_after_first():  # the first step compiles inside train()
        result = dk.train(cfg, progress=False)
    assert result.step == 4 and len(result.losses) == 4
    assert compiled_graphs() == 1


def test_self_conditioned_training_compiles_once(tmp_path, monkeypatch):
    """Self-conditioning's estimate pass (no gradient) runs the plain network, so the compiled one is only ever
    called with gradients on: one graph, no recompile on a grad-mode guard."""
    train_module = sys.modules["ddimkit.train"]

    def two_channel_unet(cfg, channels, size, classes=None):
        torch.manual_seed(cfg.seed)
        return create_model("tiny", sample_size=8, in_channels=2 * channels, out_channels=channels, **SMALL)

    monkeypatch.setattr(train_module, "_create_model", two_channel_unet)
    cfg = dk.TrainConfig(data="mnist-5k", model="tiny", out=str(tmp_path / "run"), steps=4, batch_size=4,
                         image_size=8, compile=True, save_every=0, sample_every=0, log_every=1,
                         num_sample_images=0, warmup=2, self_condition=True)
    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    coins = [train_module.draw_batch(cfg, k, images, cfg.make_schedule(), None)[-1] for k in range(4)]
    assert True in coins and False in coins  # both kinds of step run
    with recompiles_fatal_after_first():
        result = dk.train(cfg, progress=False)
    assert result.step == 4 and compiled_graphs() == 1


def test_class_conditional_guided_sampling_and_training_compile_once(tmp_path, monkeypatch):
    """Labels are an input of the compiled network, padded like t: guided sampling (two calls a step), ragged
    batches and inversion with labels compile one graph and match eager; so does class-conditional training."""
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=8, num_class_embeds=4, **SMALL).eval()
    sched, labels = dk.NoiseSchedule.linear(), {"num_classes": 3, "null_label": 3}
    fast = dk.Pipeline(model, sched, "epsilon", config=labels, compile=True)
    eager = dk.Pipeline(model, sched, "epsilon", config=labels, compile=False)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    fast.sample(4, steps=2, batch_size=4, generator=g(0))  # the one compile
    with recompiles_fatal():
        for scale in (1.0, 2.5):
            kw = dict(steps=3, guidance_scale=scale, clip_sample=None, batch_size=4)
            a, b = fast.sample(10, generator=g(1), **kw), eager.sample(10, generator=g(1), **kw)
            assert torch.allclose(a, b, atol=1e-4), (scale, (a - b).abs().max())
        images = torch.rand(6, 1, 8, 8) * 2 - 1
        kw = dict(steps=4, batch_size=4, class_labels=[0, 1, 2, 0, 1, 2])
        assert torch.allclose(fast.invert(images, **kw), eager.invert(images, **kw), atol=1e-4)
    assert compiled_graphs() == 1

    train_module = sys.modules["ddimkit.train"]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    def conditional_unet(cfg, channels, size, classes=None):
        torch.manual_seed(cfg.seed)
        return create_model("tiny", sample_size=8, num_class_embeds=classes + 1, **SMALL)

    monkeypatch.setattr(train_module, "_create_model", conditional_unet)
    cfg = dk.TrainConfig(data="mnist-5k", model="tiny", out=str(tmp_path / "run"), steps=4, batch_size=4,
                         image_size=8, compile=True, save_every=0, sample_every=0, log_every=1,
                         num_sample_images=0, warmup=2, class_conditional=True)
    with recompiles_fatal_after_first():
        result = dk.train(cfg, progress=False)
    assert result.step == 4 and compiled_graphs() == 1
