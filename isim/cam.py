"""Multi-scale + flip inference, and the per-class score maps that pseudo-labels are made from.

Scores come from a network's CAMs (max-normalised per class) or, for ISIM's segmenter, also from its
segmentation softmax; either way they are (B, C, H, W) maps in [0, 1], zero for classes the image
does not have, which a background threshold turns into seed labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from isim.errors import IsimError
from isim.models.classifier import Classifier
from isim.models.segmenter import Segmenter

SCORE_SOURCES = ("cam", "seg", "cam+seg")


@torch.no_grad()
def multiscale_flip(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: Sequence[float], flip: bool = True
) -> torch.Tensor:
    """Sum over scales (and horizontal flips) of ``forward(image)`` maps, each upsampled to the input size."""
    size = images.shape[-2:]
    total = images.new_zeros(())
    for scale in scales:
        scaled = (
            images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        maps = forward(torch.cat([scaled, scaled.flip(-1)]) if flip else scaled)
        if flip:
            maps = maps[: len(images)] + maps[len(images) :].flip(-1)
        total = total + F.interpolate(maps, size, mode="bilinear", align_corners=False)
    return total


def multiscale_cams(
    model: Classifier, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True
) -> torch.Tensor:
    """Sum over scales (and horizontal flips) of ReLU'd CAMs upsampled to the input size: (B, C, H, W)."""
    return multiscale_flip(lambda batch: F.relu(model.cam(batch)), images, scales, flip)


def normalize_cams(cams: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Keep the image's classes only and scale each class map to a maximum of 1."""
    cams = cams * labels[:, :, None, None]
    return cams / (cams.amax((2, 3), keepdim=True) + eps)


def segmenter_probs(
    model: Segmenter,
    images: torch.Tensor,
    labels: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """The segmenter's softmax over background and the image's own classes: (B, 1 + C, H, W), background first.

    Logits are averaged over scales and flips first, less ``offsets`` (1 + C,) where given (logit adjustment:
    tau x the log of each class's training prior); classes the image does not have take no share.
    """
    logits = multiscale_flip(lambda batch: model(batch)[0], images, scales, flip) / (len(scales) * (1 + flip))
    if offsets is not None:
        logits = logits - offsets.to(logits)[None, :, None, None]
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], 1)
    return logits.masked_fill(present[:, :, None, None] == 0, float("-inf")).softmax(1)


def class_scores(
    model: Classifier | Segmenter,
    images: torch.Tensor,
    labels: torch.Tensor,
    source: str = "cam",
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-class scores in [0, 1] from ``source`` (B, C, H, W), and the source's own background score (B, H, W),
    or None where it has none (CAMs: a background threshold stands in for it).

    ``cam``: normalised CAMs, no background. ``seg``: the segmenter's softmax, its background included: a pixel
    the segmenter calls background stays background however much the classes get. ``cam+seg``: the mean of the
    CAMs and the softmax's class part, against the softmax's background. ``offsets``: see ``segmenter_probs``."""
    if source not in SCORE_SOURCES:
        raise IsimError(f"label source {source!r} is unknown; use one of {', '.join(SCORE_SOURCES)}")
    if source != "cam" and not isinstance(model, Segmenter):
        raise IsimError(f"label source {source!r} needs a segmenter checkpoint; a classifier only has CAMs")
    parts, background = [], None
    if "cam" in source:
        parts.append(normalize_cams(multiscale_cams(model, images, scales, flip), labels))
    if "seg" in source:
        probs = segmenter_probs(model, images, labels, scales, flip, offsets)
        parts.append(probs[:, 1:])
        background = probs[:, 0]
    return sum(parts) / len(parts), background
