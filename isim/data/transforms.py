"""Joint image + mask augmentation with albumentations."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

from isim.data.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    crop_size: int,
    resize_long: Sequence[int],
    color_jitter: float,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Random long-side resize, flip, colour jitter (no hue: hue carries class identity), crop."""
    low, high = resize_long
    return A.Compose([
        A.LongestMaxSize(max_size=list(range(low, high + 1))),
        A.HorizontalFlip(),
        A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0, p=0.8),
        A.Normalize(mean=mean, std=std),
        A.RandomCrop(crop_size, crop_size, pad_if_needed=True, pad_position="random", fill=0, fill_mask=IGNORE_INDEX),
        ToTensorV2(),
    ])  # fmt: skip


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])
