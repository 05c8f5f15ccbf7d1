"""Small in-domain classifiers that score samples cheaply on a CPU: recognition rate and a Fréchet distance.

Inception features cost about 0.1 s per image on two CPU cores; these networks (111k parameters) score
10,000 28×28 images in seconds. They measure what a user sees first — are the samples digits (or garments),
of every class? — and their penultimate features give a Fréchet distance ("classifier-FD") in a space made
for the data, in the spirit of the FID.

The shipped weights (``ddimkit/assets/classifier-<name>.safetensors``) are trained, seeded, by
``python benchmarks/train_classifier.py``; :data:`CLASSIFIERS` says on which images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CLASSIFIERS", "DigitNet", "load_classifier", "train_classifier", "predict", "classifier_features",
           "recognition", "classifier_fd"]

ASSETS = Path(__file__).parent / "assets"

#: Shipped classifiers: name -> what they were trained on (images the generative models do not train on
#: where that matters: the MNIST one never saw the bundled ``mnist-5k`` digits that the demo trains on).
CLASSIFIERS = {
    "mnist": "the 5,000 digits of mnist_10k.npz that are not in the bundled mnist-5k (sha256 c7dd463a…)",
    "fashion-mnist": "the 60,000 training images of fashion_mnist.npz (sha256 bf16299a…)",
}


class DigitNet(nn.Module):
    """Three 3×3 conv layers (28 → 14 → 7), global average pooling, a 128-wide feature layer, 10 logits."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.convs = nn.ModuleList([nn.Conv2d(1, w, 3, padding=1), nn.Conv2d(w, 2 * w, 3, padding=1),
                                    nn.Conv2d(2 * w, 4 * w, 3, padding=1)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in (w, 2 * w, 4 * w)])
        self.fc = nn.Linear(4 * w, 128)
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 128) of images in [-1, 1] of shape (B, 1, 28, 28)."""
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i < 2:
                x = F.max_pool2d(x, 2)
        return F.relu(self.fc(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _as_input(images) -> torch.Tensor:
    """uint8 (N, 28, 28) / (N, 1, 28, 28) arrays or tensors -> float (N, 1, 28, 28) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8:
        raise ValueError(f"the classifier scores uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"the classifier scores 1-channel images, got shape {tuple(x.shape)}")
    if x.shape[-2:] != (28, 28):
        # Models trained at 32×32 pad 28×28 data by 2 pixels a side: crop it back.
        from .evaluate import center_crop

        x = center_crop(x, 28)
    return x.float() / 127.5 - 1


def load_classifier(name: str) -> DigitNet:
    """The shipped classifier ``name`` (one of :data:`CLASSIFIERS`), in eval mode on the CPU."""
    from safetensors.torch import load_file

    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    net = DigitNet()
    state = load_file(str(ASSETS / f"classifier-{name}.safetensors"))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


def _junk(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that are no class, with the soft targets the classifier should give them (outlier exposure).

    A classifier trained on real images alone is confidently wrong on noise and smudges, which is what a weak
    generative model draws: scoring must not call those recognised. Three kinds, a third each: noise, real
    images with their pixels shuffled (uniform targets), and 50/50 blends of two images (half of each class).
    """
    k = n // 3
    noise = torch.rand((k, *x.shape[1:]), generator=g) * 2 - 1
    src = x[torch.randint(0, len(x), (k,), generator=g)].flatten(1)
    shuffled = src[:, torch.randperm(src.shape[1], generator=g)].reshape(k, *x.shape[1:])
    i, j = torch.randint(0, len(x), (2, n - 2 * k), generator=g)
    blend = (x[i] + x[j]) / 2
    classes = int(y.max()) + 1
    uniform = torch.full((2 * k, classes), 1 / classes)
    halves = (F.one_hot(y[i], classes) + F.one_hot(y[j], classes)).float() / 2
    return torch.cat([noise, shuffled, blend]), torch.cat([uniform, halves])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 4, batch_size: int = 128,
                     lr: float = 3e-3, seed: int = 0) -> DigitNet:
    """Train a :class:`DigitNet`, seeded: AdamW, one-cycle cosine, random shifts of up to 2 pixels, and a
    quarter of each batch of no-class inputs with soft targets (:func:`_junk`)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DigitNet()
    x, y = _as_input(images), torch.as_tensor(np.asarray(labels)).long()
    classes = int(y.max()) + 1
    steps = epochs * (len(x) // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        junk, soft = _junk(x, y, batch_size // 4, g)
        xb = torch.cat([torch.roll(x[idx], (dy, dx), (2, 3)), junk])
        target = torch.cat([F.one_hot(y[idx], classes).float(), soft])
        loss = F.cross_entropy(net(xb), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def predict(net: DigitNet, images) -> torch.Tensor:
    """Class probabilities (N, 10) of uint8 images."""
    return _batched(lambda b: net(b).softmax(1), _as_input(images))


def classifier_features(net: DigitNet, images) -> np.ndarray:
    """Penultimate features (N, 128), float64, of uint8 images."""
    return _batched(net.features, _as_input(images)).double().numpy()


@dataclass
class Recognition:
    """Share of images classified with confidence ≥ ``threshold``, and how many of them fall in each class."""

    rate: float
    threshold: float
    class_counts: list[int]

    @property
    def classes_seen(self) -> int:
        return sum(c > 0 for c in self.class_counts)


def recognition(net: DigitNet, images, threshold: float = 0.9) -> Recognition:
    """How many samples the classifier recognises confidently, and which classes they are."""
    p = predict(net, images)
    conf, cls = p.max(1)
    sure = conf >= threshold
    counts = torch.bincount(cls[sure], minlength=p.shape[1]).tolist()
    return Recognition(float(sure.float().mean()), threshold, counts)


def classifier_fd(net: DigitNet, images_a, images_b) -> float:
    """Fréchet distance between the classifier features of two image sets (the FID formula, other features)."""
    import warnings

    from .metrics import SmallSampleWarning, feature_stats, fid_from_stats

    with warnings.catch_warnings():  # the warning's sizes are the Inception's 2,048 features, not these 128
        warnings.simplefilter("ignore", SmallSampleWarning)
        return fid_from_stats(feature_stats(classifier_features(net, images_a)),
                              feature_stats(classifier_features(net, images_b)))
