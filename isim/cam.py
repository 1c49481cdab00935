"""Multi-scale + flip inference, and class activation maps fused and normalised per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from isim.models.classifier import Classifier


@torch.no_grad()
def multiscale_flip(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    scales: Sequence[float], flip: bool = True) -> torch.Tensor:  # fmt: skip
    """Sum over scales (and horizontal flips) of ``forward(image)`` maps, each upsampled to the input size."""
    size = images.shape[-2:]
    total = images.new_zeros(())
    for scale in scales:
        scaled = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                         align_corners=False)  # fmt: skip
        maps = forward(torch.cat([scaled, scaled.flip(-1)]) if flip else scaled)
        if flip:
            maps = maps[: len(images)] + maps[len(images) :].flip(-1)
        total = total + F.interpolate(maps, size, mode="bilinear", align_corners=False)
    return total


def multiscale_cams(model: Classifier, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
                    flip: bool = True) -> torch.Tensor:  # fmt: skip
    """Sum over scales (and horizontal flips) of ReLU'd CAMs upsampled to the input size: (B, C, H, W)."""
    return multiscale_flip(lambda batch: F.relu(model.cam(batch)), images, scales, flip)


def normalize_cams(cams: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Keep the image's classes only and scale each class map to a maximum of 1."""
    cams = cams * labels[:, :, None, None]
    return cams / (cams.amax((2, 3), keepdim=True) + eps)
