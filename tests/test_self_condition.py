"""Self-conditioning (ddimkit/self_condition.py): what the network sees in training, sampling and inversion."""

import pytest
import torch
from torch import nn

import ddimkit as dk
from ddimkit.diffusion import levels, prediction_target, to_x0_eps, training_loss
from ddimkit.train import TrainConfig, draw_batch

S = dk.NoiseSchedule.linear()


class SCNet(nn.Module):
    """A small network on (image, estimate) that records every input and whether gradients were on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 1, 3, padding=1)
        self.inputs, self.grad = [], []

    def forward(self, x, t):
        self.inputs.append(x.detach().clone())
        self.grad.append(torch.is_grad_enabled())
        return torch.tanh(self.conv(x)) * (1 + t.float().reshape(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v_prediction"])
def test_training_sees_zeros_or_its_own_clipped_estimate_without_gradient(prediction):
    net = SCNet()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 6, 6, generator=g) * 2 - 1, torch.randn(4, 1, 6, 6, generator=g)
    t = torch.tensor([10, 300, 700, 990])
    a, s = levels(S, t, x0)
    x_t = a * x0 + s * noise
    training_loss(net, x0, S, t, noise, prediction, self_condition=False)
    assert len(net.inputs) == 1 and torch.equal(net.inputs[0], torch.cat([x_t, torch.zeros_like(x_t)], 1))
    net.inputs.clear(), net.grad.clear()
    loss = training_loss(net, x0, S, t, noise, prediction, self_condition=True)
    with torch.no_grad():
        first = net(torch.cat([x_t, torch.zeros_like(x_t)], 1), t)
        estimate = to_x0_eps(first, x_t, a, s, prediction)[0].clamp(-1, 1)
        error = net(torch.cat([x_t, estimate], 1), t) - prediction_target(x0, noise, a, s, prediction)
    assert net.grad[:2] == [False, True]  # the first pass builds no graph; the trained one does
    torch.testing.assert_close(net.inputs[1][:, 1:], estimate)
    assert estimate.abs().max() <= 1 and (estimate != 0).any()
    torch.testing.assert_close(loss, error.pow(2).flatten(1).mean(1))  # unweighted: min_snr_gamma None


def test_estimate_pass_runs_the_given_estimator():
    model, estimator = SCNet(), SCNet()
    x0, noise, t = torch.zeros(2, 1, 6, 6), torch.randn(2, 1, 6, 6), torch.tensor([100, 800])
    training_loss(model, x0, S, t, noise, "sample", self_condition=True, estimator=estimator)
    assert len(estimator.inputs) == 1 and estimator.grad == [False]  # the first pass, without gradient
    assert len(model.inputs) == 1 and model.grad == [True]  # the trained pass only


def test_min_snr_weighted_loss_of_the_estimate_pass_matches_its_closed_form():
    net = SCNet()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(3, 1, 6, 6, generator=g) * 2 - 1, torch.randn(3, 1, 6, 6, generator=g)
    t = torch.tensor([5, 400, 900])
    loss = training_loss(net, x0, S, t, noise, "sample", min_snr_gamma=0.25, self_condition=True)
    a, s = levels(S, t, x0)
    x_t = a * x0 + s * noise
    with torch.no_grad():
        est = net(torch.cat([x_t, torch.zeros_like(x_t)], 1), t).clamp(-1, 1)  # x0-prediction: x̂0 is the output
        mse = (net(torch.cat([x_t, est], 1), t) - x0).pow(2).flatten(1).mean(1)
    snr = S.snr[t].float()
    torch.testing.assert_close(loss, mse * torch.minimum(snr, torch.tensor(0.25)))


def test_feedback_gives_each_step_the_x0_of_the_step_before_and_empty_gives_none():
    x_T = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    net, used = SCNet(), []
    dk.sample(net, x_T, S, "ddim", steps=8, prediction_type="sample", clip_sample=1.0, self_condition="feedback",
              callback=lambda d: used.append(d["x0"].clone()))
    estimates = [x[:, 1:] for x in net.inputs]
    assert len(estimates) == 8 and torch.equal(estimates[0], torch.zeros_like(x_T))
    for k in range(1, 8):
        torch.testing.assert_close(estimates[k], used[k - 1])  # the clipped x̂0 the sampler itself used
    net = SCNet()
    dk.sample(net, x_T, S, "ddim", steps=8, prediction_type="sample", self_condition="empty")
    assert all(torch.equal(x[:, 1:], torch.zeros_like(x_T)) for x in net.inputs)
    with pytest.raises(ValueError, match="self_condition"):
        dk.sample(net, x_T, S, self_condition="yes")


def test_draw_batch_trains_half_the_batches_on_the_estimate_without_changing_the_rest():
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    plain = draw_batch(TrainConfig(batch_size=8), 3, images, S, None)
    sc = draw_batch(TrainConfig(batch_size=8, self_condition=True), 3, images, S, None)
    assert plain[-1] is None and isinstance(sc[-1], bool)
    for a, b in zip(plain[:2] + plain[3:4], sc[:2] + sc[3:4]):
        assert torch.equal(a, b)
    coins = [draw_batch(TrainConfig(batch_size=2, self_condition=True), k, images, S, None)[-1] for k in range(200)]
    assert 70 < sum(coins) < 130


def test_trained_self_conditioned_model_loads_samples_inverts_and_refuses_diffusers_export(tmp_path):
    from ddimkit.diffusers_io import export_diffusers

    cfg = TrainConfig(out=str(tmp_path / "sc"), steps=3, batch_size=4, warmup=1, save_every=3, sample_every=0,
                      num_sample_images=0, self_condition=True)
    dk.train(cfg, progress=False)
    pipe = dk.load(tmp_path / "sc")
    assert pipe.self_condition and pipe.image_shape == (1, 28, 28) and pipe.model.config["in_channels"] == 2
    x = pipe.sample(3, "ddim", steps=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 28, 28)
    z = pipe.invert(x[:2], steps=5)
    back = pipe.reconstruct(z, steps=5)
    empty = dk.sample(pipe.model, z, pipe.schedule, "ddim", steps=5, prediction_type=pipe.prediction_type,
                      self_condition="empty")
    torch.testing.assert_close(back, empty.clamp(-1, 1))  # decoded on the path inversion ran, without estimates
    with pytest.raises(ValueError, match="self-conditioned"):
        export_diffusers(pipe, tmp_path / "export")


def test_inversion_runs_the_path_without_estimates_both_ways():
    """The round trip is near-exact on the path without estimates; decoding with fed-back estimates leaves it."""
    torch.manual_seed(3)
    net = SCNet()
    x0 = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4)) - 0.5
    x_T = dk.ddim_invert(net, x0, S, steps=50, refine=5, self_condition="empty")
    same = dk.sample(net, x_T, S, "ddim", steps=50, self_condition="empty")
    other = dk.sample(net, x_T, S, "ddim", steps=50, self_condition="feedback")
    assert (same - x0).abs().max() < 1e-4
    assert (other - x0).abs().max() > 100 * (same - x0).abs().max()
