"""The fast path's switches and their CPU fallbacks (the GPU speed itself is measured by benchmarks/speed.py)."""

import argparse

import pytest
import torch

import ddimkit as dk
from ddimkit.cli.common import load_pipeline


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "run"
    dk.train(dk.TrainConfig(model="tiny", out=str(out), steps=2, batch_size=4, save_every=0, sample_every=0,
                            num_sample_images=0), progress=False)
    return out


def test_cli_defaults_on_cpu_are_plain_fp32(run):
    args = argparse.Namespace(ckpt=str(run), ema=True, device="cpu", precision=None, compile=None)
    p = load_pipeline(args)
    assert p.precision == "fp32" and p.compile == "auto" and p.device.type == "cpu"  # auto: eager on the CPU
    assert p._net(batch_size=2, work=1e12) is not None and not getattr(p, "_compiled", None)


def test_reduced_precision_is_a_no_op_on_cpu(run):
    """Autocast applies to CUDA only: on the CPU a bf16 pipeline gives exactly the fp32 images."""
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    fp32 = dk.load(run, device="cpu").sample(2, steps=5, generator=g())
    bf16 = dk.load(run, device="cpu", precision="bf16").sample(2, steps=5, generator=g())
    assert torch.equal(fp32, bf16)
    with pytest.raises(ValueError, match="precision"):
        dk.load(run, device="cpu", precision="fp8")


def test_compiled_network_is_used_and_agrees(run, monkeypatch):
    calls = []
    real = torch.compile

    def eager_compile(model, **kw):  # the eager backend traces with dynamo but skips slow CPU codegen
        calls.append(model)
        return real(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    plain = dk.load(run, device="cpu").sample(2, steps=4, eta=0.5, generator=g())
    p = dk.load(run, device="cpu", compile=True)
    fast = p.sample(2, steps=4, eta=0.5, generator=g())
    p.sample(2, steps=4, generator=g())  # compiled once per pipeline
    assert p.guide is not None and calls == [p.model, p.guide]  # the default recipe keeps a guide: both compile
    p.sample(2, steps=4, generator=g(), autoguidance_scale=1.0)  # unguided: the model alone, compiled already
    assert len(calls) == 2
    assert (plain - fast).abs().max() <= 1e-5


def test_batch_for_memory():
    from ddimkit.batching import batch_for_memory

    gib, mib = 2**30, 2**20
    assert batch_for_memory(10_000, 10 * gib, mib) == 8192          # 80% of 10 GiB at 1 MiB per image
    assert batch_for_memory(10_000, 10 * gib, 3 * mib) == 2728      # 2730 rounded down to a multiple of 8
    assert batch_for_memory(100, 10 * gib, mib) == 100              # never more than asked for
    assert batch_for_memory(100, mib, 10 * gib) == 1                # too big still runs, one at a time
    assert batch_for_memory(5, 100, 16) == 5                        # small batches are not rounded
    with pytest.raises(ValueError, match="at least 1"):
        batch_for_memory(0, gib, mib)


def test_auto_batch_size_is_everything_on_the_cpu(run):
    from ddimkit.batching import auto_batch_size

    def net(x, t):
        raise AssertionError("the CPU needs no probe")

    assert auto_batch_size(net, (1, 28, 28), 10_000, torch.device("cpu")) == 10_000
    p = dk.load(run, device="cpu")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    # the default (one batch) draws the same images as an explicit batch of all of them
    assert torch.equal(p.sample(3, sampler="ddim", steps=3, eta=1.0, generator=g()),
                       p.sample(3, sampler="ddim", steps=3, eta=1.0, generator=g(), batch_size=3))
