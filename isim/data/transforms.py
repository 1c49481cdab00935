"""Joint image + mask augmentation with albumentations."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2
from timm.models import get_pretrained_cfg

from isim.data.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, backbone: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` where given (data.mean, data.std), else what ``backbone``'s pretrained weights expect:
    timm's pretrained config (e.g. 0.5 / 0.5 for tf_efficientnet_*), ImageNet's where timm has none."""
    pretrained = get_pretrained_cfg(backbone, allow_unregistered=True)
    known = pretrained is not None and pretrained.mean
    own_mean, own_std = (pretrained.mean, pretrained.std) if known else (IMAGENET_MEAN, IMAGENET_STD)
    return tuple(mean if mean is not None else own_mean), tuple(std if std is not None else own_std)


def train_transform(
    crop_size: int,
    resize_long: Sequence[int],
    color_jitter: float,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Random long-side resize, flip, colour jitter (no hue: hue carries class identity), crop."""
    low, high = resize_long
    return A.Compose(
        [
            A.LongestMaxSize(max_size=list(range(low, high + 1))),
            A.HorizontalFlip(),
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0, p=0.8),
            A.Normalize(mean=mean, std=std),
            A.RandomCrop(
                crop_size, crop_size, pad_if_needed=True, pad_position="random", fill=0, fill_mask=IGNORE_INDEX
            ),
            ToTensorV2(),
        ]
    )


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])
