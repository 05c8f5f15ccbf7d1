"""The class labels of a dataset, for class-conditional training (:mod:`ddimkit.guidance`).

Labels come with the images, in :func:`ddimkit.data.load_images`' order, as a LongTensor (N,) in [0, K):

- ``mnist-5k``: the bundled digits' labels.
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's targets.
- ``npz:PATH[:KEY]``: the array beside the images: ``y`` for ``x``, ``y_train`` for ``x_train``, ``y_test`` for
  ``x_test``, ``labels`` for ``images``, or else one named ``labels`` or ``y``.
- ``folder:PATH``: the first-level subfolder of each image, the folders' names in sorted order giving 0, 1, …
  (torchvision's ImageFolder convention).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .data import image_files, read_npz_array, split_npz_spec, torchvision_dataset

__all__ = ["load_labels", "num_classes"]

_LABEL_KEYS = {"x": "y", "x_train": "y_train", "x_test": "y_test", "images": "labels"}


def _npz_labels(path: str, key: str | None) -> np.ndarray:
    _, key = read_npz_array(path, key)
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
    tried = list(dict.fromkeys(k for k in (_LABEL_KEYS.get(key), "labels", "y") if k))
    label_key = next((k for k in tried if k in keys), None)
    if label_key is None:
        raise ValueError(f"{path} has no labels for {key!r} (looked for {', '.join(tried)}; it has {keys})")
    return read_npz_array(path, label_key)[0]


def _folder_labels(folder: str) -> np.ndarray:
    root = Path(folder)
    parts = [p.relative_to(root).parts for p in image_files(root)]
    if not parts or any(len(p) < 2 for p in parts):
        raise ValueError(f"class labels from {folder} need every image in a subfolder named by its class "
                         "(folder/CLASS/image.png)")
    names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[p[0]] for p in parts])


def load_labels(spec: str) -> torch.Tensor:
    """The class label of every image of the dataset ``spec`` (see the module docstring)."""
    name, _, rest = spec.partition(":")
    if name == "mnist-5k":
        with resources.as_file(resources.files("ddimkit") / "assets" / "mnist_5k.npz") as p:
            y = read_npz_array(str(p), "y")[0]
    elif name == "npz":
        y = _npz_labels(*split_npz_spec(rest))
    elif name == "folder":
        y = _folder_labels(rest)
    elif name in ("mnist", "fashion-mnist", "cifar10"):
        y = np.asarray(torchvision_dataset(name, train=rest != "test").targets)
    else:
        raise ValueError(f"no class labels for dataset {spec!r}")
    y = np.asarray(y).reshape(-1)
    if y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"the labels of {spec} must be integers >= 0")
    return torch.from_numpy(y.astype(np.int64))


def num_classes(labels: torch.Tensor) -> int:
    """K: labels run over [0, K)."""
    return int(labels.max()) + 1

