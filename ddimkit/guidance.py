"""Class labels and classifier-free guidance (Ho & Salimans 2022) for class-conditional networks.

A class-conditional network ``model(x, t, class_labels)`` (:class:`~ddimkit.models.unet.UNet` with
``num_class_embeds``) trained by ddimkit has one more label than the data has classes: the null label K.
Training replaces a share of the labels by it (label dropout), so that the same network also learns to
predict without a class. A sampler can then mix the two predictions (the paper's eq. 6, with its w written
as w − 1 here, as diffusers' ``guidance_scale`` does)::

    guided = u + w (c − u)        c = model(x, t, y), u = model(x, t, K)

w = 1 is the conditional network alone, w = 0 the unconditional one, and w > 1 pushes further from the
unconditional prediction.

The mix is made on the network's raw output. For every parameterisation (ε, x0, v), x̂0 and ε̂ are affine in
that output with coefficients that depend on (x_t, t) alone (:func:`~ddimkit.diffusion.to_x0_eps`), so mixing
outputs mixes x̂0 and ε̂ alike, and :class:`~ddimkit.denoiser.Denoiser` stays the one place that reads them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["conditioned", "class_labels_for", "check_guidance", "networks_evaluated"]


def _output(out):
    return getattr(out, "sample", out)


def check_guidance(class_labels, guidance_scale: float, null_label: int | None):
    """Refuse a guidance scale the model cannot run: negative, or other than 1 without labels or without a
    null label."""
    if guidance_scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {guidance_scale}")
    if guidance_scale != 1 and class_labels is None:
        raise ValueError("guidance needs a class-conditional model and its class labels")
    if guidance_scale != 1 and null_label is None:
        raise ValueError("classifier-free guidance needs a model trained with label dropout (a null label); "
                         "this one has none, so only guidance scale 1 is possible")


def conditioned(model: Callable, class_labels: torch.Tensor, guidance_scale: float = 1.0,
                null_label: int | None = None) -> Callable:
    """``net(x, t)`` for the samplers: ``model(x, t, class_labels)``, guided when ``guidance_scale`` ≠ 1.

    Args:
        model: a class-conditional network ``model(x, t, class_labels)``.
        class_labels: LongTensor (B,), one label per image of the batch the samplers will pass.
        guidance_scale: w above; 1 and 0 call the network once, any other value twice (conditional, null).
        null_label: the label that means "no class"; needed for any w ≠ 1.
    """
    check_guidance(class_labels, guidance_scale, null_label)

    def net(x: torch.Tensor, t) -> torch.Tensor:
        labels = class_labels.to(x.device)
        if guidance_scale == 1:
            return _output(model(x, t, labels))
        null = _output(model(x, t, torch.full_like(labels, null_label)))
        if guidance_scale == 0:
            return null
        return null + guidance_scale * (_output(model(x, t, labels)) - null)

    return net


def networks_evaluated(scale: float) -> int:
    """Network evaluations of one mix u + w (c − u), by classifier-free guidance (c: conditional, u: null) or
    autoguidance (c: the model, u: the guide): one at w = 1 (c alone) or w = 0 (u alone), two otherwise."""
    return 1 if scale in (0, 1) else 2


def class_labels_for(labels: int | Sequence[int] | torch.Tensor | None, n: int, num_classes: int | None,
                     null_label: int | None = None, default: str = "cycle") -> torch.Tensor | None:
    """The label of each of ``n`` images, as a LongTensor (n,); ``None`` for a model without classes.

    ``labels`` is one label for all images, one per image, or ``None`` for the default: ``"cycle"`` gives
    image i the label i mod K (every class, in equal shares, the same for any batch size or process count);
    ``"null"`` gives every image the null label (the unconditional network, as inversion uses). The null
    label itself is a valid label.
    """
    if num_classes is None:
        if labels is not None:
            raise ValueError("this model is not class-conditional; it takes no class labels")
        return None
    if labels is None:
        if default == "cycle":
            return torch.arange(n) % num_classes
        if null_label is None:
            raise ValueError("this model was trained without label dropout, so it has no unconditional "
                             "prediction: give class labels")
        return torch.full((n,), null_label, dtype=torch.long)
    out = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if out.numel() == 1:
        out = out.expand(n).clone()
    if out.numel() != n:
        raise ValueError(f"got {out.numel()} class labels for {n} images")
    top = num_classes if null_label is not None else num_classes - 1  # the null label is a label too
    if int(out.min()) < 0 or int(out.max()) > top:
        raise ValueError(f"class labels must lie in [0, {top}], got {int(out.min())}..{int(out.max())}")
    return out
