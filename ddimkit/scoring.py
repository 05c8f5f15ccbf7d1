"""Scoring a sweep's cells against one reference set: FID, KID with its spread, and the classifier-FD.

A sweep measures many cells (a sampler, η and step count each) against the same reference images, so
:class:`CellScorer` extracts the reference's features once (from ddimkit's cache when they were measured
before) and then scores each cell's samples with:
- ``fid``: the Fréchet Inception distance (biased upward at small n; only 10,000 a side compares with
  published numbers);
- ``kid`` and ``kid_std``: the kernel Inception distance, unbiased at any n, with its standard deviation
  (:func:`ddimkit.metrics.kid`), which is what makes 1,000-sample cells honest on a CPU;
- ``cfd``: the Fréchet distance in the features of a small shipped classifier (:mod:`ddimkit.classifier`),
  cheap enough for every cell on a CPU.
Under a launcher each process passes its share of the samples; the numbers are the whole set's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from . import distributed as D
from . import metrics
from .checkpoint import atomic_write

__all__ = ["CellScorer", "image_set_features"]


def _read_features(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["features"].astype(np.float64)


def image_set_features(s, model=None, batch_size: int = 50, device=None, use_cache: bool = True,
                       progress: bool = False) -> np.ndarray:
    """Inception features of every image of an :class:`~ddimkit.evaluate.ImageSet` (for KID), in image order.

    They are cached as float32, and returned rounded to float32 even when just computed, so that a cached
    and a fresh run give the same numbers.
    """
    from .sharded_metrics import sharded_features

    if s.images is None:
        raise ValueError(f"{s.name} holds statistics; KID needs the reference images")
    from .evaluate import image_set_cache_path

    path = image_set_cache_path(s, "fid-features")
    if use_cache and D.on_main(path.is_file):
        return D.on_main(_read_features, path)
    feats = sharded_features(s.images, model, batch_size, device, progress).astype(np.float32)
    if use_cache and D.is_main():
        atomic_write(path, lambda p: np.savez(open(p, "wb"), features=feats))
    return feats.astype(np.float64)


class CellScorer:
    """Scores uint8 samples against ``reference`` (an :class:`~ddimkit.evaluate.ImageSet`).

    Args:
        reference: the reference images (or, for FID alone, their statistics).
        inception: the Inception network, or None to load the default; unused when ``fid`` and ``kid`` are off.
        fid, kid: which Inception measures to take.
        classifier: a shipped classifier's name (``mnist``, ``fashion-mnist``) for the classifier-FD, or None.
        use_cache: read and write the reference's features in ddimkit's cache.
    """

    def __init__(self, reference, inception=None, device=None, fid: bool = True, kid: bool = True,
                 classifier: str | None = None, use_cache: bool = True, progress: bool = True):
        from .evaluate import image_set_stats

        self.inception, self.device = inception, device
        self.fid, self.kid = fid, kid and reference.images is not None
        self.ref_feats = self.ref_stats = None
        if self.kid:
            self.ref_feats = image_set_features(reference, inception, device=device, use_cache=use_cache,
                                                progress=progress)
            self.ref_stats = metrics.feature_stats(self.ref_feats)
        elif fid:
            self.ref_stats = image_set_stats(reference, inception, device=device, use_cache=use_cache,
                                             progress=progress)
        self.classifier = None
        if classifier is not None:
            if reference.images is None:
                raise ValueError(f"{reference.name} holds statistics; the classifier-FD needs the reference images")
            from .classifier import classifier_features, load_classifier

            self.classifier = load_classifier(classifier)
            self.ref_cls = metrics.feature_stats(classifier_features(self.classifier, reference.images))

    def __call__(self, u8: torch.Tensor) -> dict:
        """``u8``: this process's share of the samples. Returns {fid, kid, kid_std, cfd} (those measured)."""
        from .sharded_metrics import stats_of_shares

        out = {}
        if self.fid or self.kid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", metrics.SmallSampleWarning)
                feats = metrics.inception_features(u8, self.inception, device=self.device)
                if self.fid:
                    out["fid"] = metrics.fid_from_stats(self.ref_stats, stats_of_shares(feats))
            if self.kid:
                every = D.all_gather(torch.from_numpy(feats), "gathering the features").numpy()
                out["kid"], out["kid_std"] = metrics.kid(every, self.ref_feats)
        if self.classifier is not None:
            from .classifier import classifier_features

            local = classifier_features(self.classifier, u8)
            with warnings.catch_warnings():  # its sizes are the Inception's 2,048 features, not these 128
                warnings.simplefilter("ignore", metrics.SmallSampleWarning)
                out["cfd"] = metrics.fid_from_stats(self.ref_cls, stats_of_shares(local))
        return out
