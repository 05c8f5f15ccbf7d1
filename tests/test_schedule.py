import math

import numpy as np
import pytest
import torch

import ddimkit as dk


def test_linear_schedule_values():
    s = dk.NoiseSchedule.linear()
    assert s.betas.dtype == torch.float64 and s.num_train_timesteps == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(s.snr.numpy(), expected / (1 - expected), rtol=1e-12)


def test_cosine_schedule_matches_formula():
    s = dk.NoiseSchedule.cosine(num_train_timesteps=1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # Uncapped steps reproduce ᾱ(t) = f(t/T)/f(0) exactly; the cap only bites at the very end.
    t = 500
    assert float(s.alphas_cumprod[t]) == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-10)
    assert float(s.betas.max()) == pytest.approx(0.999)


def test_scaled_linear_and_sigmoid():
    s = dk.NoiseSchedule.scaled_linear()
    assert float(s.betas[0]) == pytest.approx(0.00085) and float(s.betas[-1]) == pytest.approx(0.012)
    assert np.allclose(np.diff(s.betas.sqrt().numpy()), np.diff(s.betas.sqrt().numpy())[0])
    g = dk.NoiseSchedule.sigmoid()
    assert 1e-4 < float(g.betas[0]) < float(g.betas[500]) < float(g.betas[-1]) < 0.02


def test_zero_terminal_snr_rescale():
    s = dk.NoiseSchedule.linear(rescale_zero_terminal_snr=True)
    base = dk.NoiseSchedule.linear()
    assert float(s.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-15)
    assert float(s.alphas_cumprod[0]) == pytest.approx(float(base.alphas_cumprod[0]), rel=1e-12)
    assert s.zero_terminal_snr and not base.zero_terminal_snr


@pytest.mark.parametrize("make", [
    lambda: dk.NoiseSchedule.linear(100, 1e-3, 0.05), lambda: dk.NoiseSchedule.cosine(50),
    lambda: dk.NoiseSchedule.sigmoid(20), lambda: dk.NoiseSchedule.scaled_linear(rescale_zero_terminal_snr=True),
    lambda: dk.NoiseSchedule.from_betas([0.1, 0.2, 0.3]),
])
def test_config_round_trip(make):
    s = make()
    r = dk.NoiseSchedule.from_config(s.config)
    assert torch.equal(r.betas, s.betas)


def test_schedule_is_immutable_and_validated():
    s = dk.NoiseSchedule.linear()
    with pytest.raises(Exception):
        s.betas = torch.zeros(3)
    for bad in ([0.1, 0.0], [0.5, 1.5], [], [float("nan")]):
        with pytest.raises(ValueError):
            dk.NoiseSchedule.from_betas(bad)
    with pytest.raises(ValueError, match="unknown schedule"):
        dk.NoiseSchedule.from_name("exponential")


def test_grids_match_definitions():
    T = 1000
    assert dk.timesteps(T, 10, "leading").tolist() == list(range(900, -1, -100))
    assert dk.timesteps(T, 10, "leading", steps_offset=1).tolist() == list(range(901, 0, -100))
    assert dk.timesteps(T, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert dk.timesteps(T, 10, "linspace").tolist() == np.linspace(0, 999, 10).round()[::-1].astype(int).tolist()
    quad = (np.linspace(0, math.sqrt(800), 10) ** 2).astype(int)[::-1].tolist()
    assert dk.timesteps(T, 10, "quadratic").tolist() == quad
    for spacing in ("leading", "trailing", "linspace"):
        for n in (1, 3, 7, 50, 333, 999, 1000):
            g = dk.timesteps(T, n, spacing)
            assert len(g) == n and g.dtype == torch.long
            assert (g[:-1] > g[1:]).all() and g.min() >= 0 and g.max() < T
    assert dk.timesteps(T, 1000, "leading").tolist() == list(range(999, -1, -1))


def test_trailing_grid_uneven_ratio():
    g = dk.timesteps(1000, 3, "trailing")
    assert g.tolist() == [999, 666, 332]


def test_explicit_grid_and_errors():
    assert dk.timesteps(1000, [999, 500, 0]).tolist() == [999, 500, 0]
    with pytest.raises(ValueError, match="strictly decreasing"):
        dk.timesteps(1000, [0, 500, 999])
    with pytest.raises(ValueError, match="strictly decreasing"):
        dk.timesteps(1000, [500, 500])
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        dk.timesteps(1000, [1000, 0])
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        dk.timesteps(1000, [5, -1])
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        dk.timesteps(1000, 0)
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        dk.timesteps(1000, 1001)
    with pytest.raises(ValueError, match="unknown spacing"):
        dk.timesteps(1000, 10, "cubic")

def test_quadratic_grid_never_repeats():
    paper = (np.linspace(0, math.sqrt(800), 100) ** 2).astype(int)
    assert len(set(paper.tolist())) < 100  # the paper's own grid repeats at 100 steps
    for n in (50, 100, 500, 1000):
        g = dk.timesteps(1000, n, "quadratic")
        assert len(g) == n and (g[:-1] > g[1:]).all() and g.max() < 1000
    # where the paper's grid has no repeats it is unchanged; the large end keeps its values
    assert dk.timesteps(1000, 100, "quadratic")[0] == 800
