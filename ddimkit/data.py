"""Image datasets as uint8 tensors (N, C, H, W), and their fitting to a model's size.

Sources (the ``spec`` strings the CLI takes):

- ``mnist-5k``: 5,000 real MNIST digits bundled inside ddimkit (offline default).
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision downloads (online; ``:test`` for the test split).
- ``folder:PATH``: every image file below PATH, recursively.
- ``npz:PATH`` or ``npz:PATH:KEY``: a uint8 array in an ``.npz`` file (N×H×W, N×H×W×C or N×C×H×W).

Everything stays uint8 until a batch is taken: :func:`to_model_range` maps it to [-1, 1].
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DATASETS", "load_images", "fit_images", "to_model_range", "to_uint8", "read_image", "image_files",
           "array_to_nchw", "cache_dir"]

DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "folder:PATH", "npz:PATH[:KEY]")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_NPZ_KEYS = ("x", "images", "x_train", "arr_0")


def cache_dir() -> Path:
    """ddimkit's cache: ``$DDIMKIT_CACHE`` or ``~/.cache/ddimkit``."""
    env = os.environ.get("DDIMKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddimkit"


def array_to_nchw(a: np.ndarray, name: str = "array") -> torch.Tensor:
    """A uint8 image array in any common layout as a uint8 tensor (N, C, H, W).

    Accepts N×H×W (gray), N×H×W×C (C ∈ {1, 3, 4}) and N×C×H×W (C ∈ {1, 3}). Float arrays in [0, 1] are
    rounded to uint8; anything else is refused. An alpha channel is dropped.
    """
    a = np.asarray(a)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1:
            a = np.round(a * 255).astype(np.uint8)
        else:
            raise ValueError(f"{name} must hold uint8 images (or floats in [0, 1]), got {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        elif a.shape[1] not in (1, 3):
            raise ValueError(f"{name} has shape {a.shape}: expected N×H×W, N×H×W×C or N×C×H×W")
    else:
        raise ValueError(f"{name} has shape {a.shape}: expected N×H×W, N×H×W×C or N×C×H×W")
    if a.shape[1] == 4:
        a = a[:, :3]
    if a.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
    return torch.from_numpy(np.ascontiguousarray(a))


def _load_npz(path: str, key: str | None) -> torch.Tensor:
    arr, key = read_npz_array(path, key)
    return array_to_nchw(arr, f"{path}:{key}")


def read_npz_array(path: str, key: str | None, keys_tried: tuple = _NPZ_KEYS) -> tuple[np.ndarray, str]:
    """One array of an .npz file and its key; without a key, the first of ``keys_tried`` present, else the
    only array that can hold images."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if key is None:
                key = next((k for k in keys_tried if k in keys), None)
                if key is None:
                    candidates = [k for k in keys if z[k].ndim in (3, 4)]
                    if len(candidates) != 1:
                        raise ValueError(f"{path} has arrays {keys}; name one as npz:{path}:KEY")
                    key = candidates[0]
            if key not in keys:
                raise ValueError(f"{path} has no array {key!r}; it has {keys}")
            arr = z[key]
    except ValueError:
        raise
    except Exception as e:  # zipfile/np errors for a corrupt or non-npz file
        raise ValueError(f"cannot read {path} as .npz: {e}") from None
    return arr, key


def split_npz_spec(rest: str) -> tuple[str, str | None]:
    if Path(rest).is_file() or ":" not in rest:
        return rest, None
    path, key = rest.rsplit(":", 1)
    return path, key


def image_files(folder: str | Path) -> list[Path]:
    """All image files below ``folder``, recursively, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """One image file as uint8 (C, H, W); ``channels`` 1 or 3 converts, None keeps gray as 1 and colour as 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if channels is None:
                channels = 1 if mode in ("1", "L", "LA", "I", "I;16", "F") else 3
            im = im.convert("L" if channels == 1 else "RGB")
            a = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1).contiguous()


def _load_folder(folder: str, size: int | None, channels: int | None) -> torch.Tensor:
    files = image_files(folder)
    if not files:
        raise ValueError(f"no images found in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if channels is None:
        from PIL import Image

        with Image.open(files[0]) as im:
            channels = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    images = [read_image(p, channels) for p in files]
    if size is None:
        size = min(min(im.shape[1:]) for im in images)
    return torch.cat([fit_images(im[None], size) for im in images])


def torchvision_dataset(name: str, train: bool):
    """A torchvision dataset (downloaded into the cache on first use)."""
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets
    except Exception as e:  # ImportError, or torchvision built for another torch
        raise ValueError(f"the {name!r} dataset needs torchvision ({e}); install it, or use npz:PATH or "
                         "folder:PATH") from None
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    root = cache_dir() / "datasets"
    try:
        return cls(root=str(root), train=train, download=True)
    except Exception as e:
        raise ValueError(f"could not download {name!r} into {root} (offline?): {e}; use npz:PATH or "
                         "folder:PATH instead") from None


def _torchvision(name: str, train: bool) -> torch.Tensor:
    ds = torchvision_dataset(name, train)
    data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
    return array_to_nchw(np.asarray(data, dtype=np.uint8), name)


def load_images(spec: str, size: int | None = None, channels: int | None = None) -> torch.Tensor:
    """Load a dataset by its spec (see the module docstring) as uint8 (N, C, H, W).

    ``size`` fits every image to size×size (:func:`fit_images`); ``channels`` converts gray↔RGB.
    """
    name, _, rest = spec.partition(":")
    if name == "folder":
        if not rest:
            raise ValueError("folder: needs a path, as in folder:PATH")
        x = _load_folder(rest, size, channels)
    elif name == "npz":
        if not rest:
            raise ValueError("npz: needs a path, as in npz:PATH or npz:PATH:KEY")
        x = _load_npz(*split_npz_spec(rest))
    elif name == "mnist-5k":
        if rest and rest != "train":
            raise ValueError("mnist-5k has a single split")
        with resources.as_file(resources.files("ddimkit") / "assets" / "mnist_5k.npz") as p:
            x = _load_npz(str(p), "x")
    elif name in ("mnist", "fashion-mnist", "cifar10"):
        if rest not in ("", "train", "test"):
            raise ValueError(f"unknown split {rest!r} for {name}; use {name}:train or {name}:test")
        x = _torchvision(name, train=rest != "test")
    else:
        raise ValueError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASETS)}")
    if channels is not None:
        x = convert_channels(x, channels, spec)
    if size is not None:
        x = fit_images(x, size)
    return x


def convert_channels(x: torch.Tensor, channels: int, what: str = "images") -> torch.Tensor:
    """Gray → RGB by repetition; RGB → gray by ITU-R 601 luma (as PIL's "L")."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"{what} have {c} channels; cannot convert to {channels}")


def fit_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Fit uint8 images (N, C, H, W) to size×size.

    Images that fit inside are padded (centred, black) — Fashion-MNIST's 28×28 becomes 32×32 without
    resampling. Larger ones are centre-cropped to a square and resized with antialiased bilinear filtering.
    """
    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top))
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, :, top:top + side, left:left + side]
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    return x.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255] (clamped and rounded, as diffusers' pipelines do).

    FID is measured on 8-bit images, so samples are quantised like the real data before feature extraction.
    """
    return ((torch.as_tensor(x).detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
