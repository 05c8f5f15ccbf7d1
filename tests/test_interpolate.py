import math

import pytest
import torch

import ddimkit as dk


def _pair(shape=(3, 4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_slerp_endpoints_and_formula():
    z0, z1 = _pair()
    assert torch.allclose(dk.slerp(z0, z1, 0.0), z0, atol=1e-6)
    assert torch.allclose(dk.slerp(z0, z1, 1.0), z1, atol=1e-6)
    a, b = z0[0].flatten().double(), z1[0].flatten().double()
    theta = math.acos(float(a @ b / (a.norm() * b.norm())))
    expected = (math.sin(0.3 * theta) * a + math.sin(0.7 * theta) * b) / math.sin(theta)
    assert torch.allclose(dk.slerp(z0, z1, 0.7)[0].flatten().double(), expected, atol=1e-5)


def test_slerp_keeps_the_norm_of_equal_norm_points_and_lerp_does_not():
    z0, z1 = _pair((1, 4096))
    z1 = z1 / z1.norm() * z0.norm()
    mid_s, mid_l = dk.slerp(z0, z1, 0.5), dk.lerp(z0, z1, 0.5)
    assert float(mid_s.norm()) == pytest.approx(float(z0.norm()), rel=1e-5)
    assert float(mid_l.norm()) < 0.8 * float(z0.norm())  # nearly orthogonal: lerp shrinks by ~1/√2


def test_slerp_sequence_of_alphas_and_per_sample_angles():
    z0, z1 = _pair()
    alphas = [0, 0.2, 0.4, 0.5, 0.6, 0.8, 1]
    out = dk.slerp(z0, z1, alphas)
    assert out.shape == (7, *z0.shape)
    for i, a in enumerate(alphas):
        assert torch.allclose(out[i], dk.slerp(z0, z1, a))
    # sample 1 is interpolated on its own great circle, whatever the other samples are
    assert torch.allclose(dk.slerp(z0[1:2], z1[1:2], 0.3), dk.slerp(z0, z1, 0.3)[1:2], atol=1e-6)


def test_slerp_parallel_falls_back_to_lerp():
    z0 = torch.randn(2, 16)
    z1 = 2 * z0
    assert torch.allclose(dk.slerp(z0, z1, 0.25), 1.25 * z0, atol=1e-6)


def test_slerp_antiparallel_is_defined_and_orthogonal_halfway():
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    z1 = -z0
    mid = dk.slerp(z0, z1, 0.5)
    assert torch.isfinite(mid).all()
    assert torch.allclose(mid.norm(dim=1), z0.norm(dim=1), rtol=1e-5)
    assert (mid * z0).sum(1).abs().max() < 1e-4  # a quarter turn from z0
    assert torch.allclose(dk.slerp(z0, z1, 1.0), z1, atol=1e-5)
    # a constant vector (rolled copy is parallel) still finds an orthogonal direction
    c = torch.ones(1, 8)
    assert torch.isfinite(dk.slerp(c, -c, 0.5)).all()


def test_single_vector_and_errors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = dk.slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        dk.slerp(a, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="zero vector"):
        dk.slerp(a, torch.zeros(2), 0.5)


def test_lerp():
    z0, z1 = _pair()
    assert torch.allclose(dk.lerp(z0, z1, 0.25), 0.75 * z0 + 0.25 * z1)
    assert dk.lerp(z0, z1, [0.0, 1.0]).shape == (2, *z0.shape)


def test_fusing_inverted_images_gives_the_inputs_back_at_the_ends(tmp_path):
    """Decoding between inverted images must follow the inversion (no clipping): α = 0 and 1 are the inputs'
    reconstructions. A model that stores clipping as its default would otherwise decode other images (an
    ε-model, whose x̂0 leaves [-1, 1] when it is weak, shows it)."""
    cfg = dict(out=str(tmp_path / "r"), steps=3, batch_size=4, warmup=1, save_every=3, sample_every=0,
               num_sample_images=0, log_every=1, clip_sample=1.0, prediction="eps", min_snr_gamma=None)
    pipe = dk.train(dk.TrainConfig(**cfg), progress=False).pipeline
    x = dk.load_images("mnist-5k")[:2].float() / 127.5 - 1
    z = pipe.invert(x, steps=10)
    ends = pipe.interpolate(z[:1], z[1:], [0.0, 1.0], steps=10, inverted=True)
    torch.testing.assert_close(ends, pipe.reconstruct(z, steps=10))
    clipped = pipe.interpolate(z[:1], z[1:], [0.0, 1.0], steps=10)
    assert not torch.allclose(clipped, ends, atol=1e-3)  # what the clipping decode did instead
