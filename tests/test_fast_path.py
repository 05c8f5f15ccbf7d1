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
    assert p.precision == "fp32" and p.compile is False and p.device.type == "cpu"


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
    assert len(calls) == 1 and calls[0] is p.model
    assert (plain - fast).abs().max() <= 1e-5
