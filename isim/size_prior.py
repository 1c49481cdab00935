"""Sizing pseudo-labels to a size prior, GT-free: ``labels.foreground_share``, the share of image pixels that
objects cover, read off a few images as a person would (a weak annotation, like the image labels).

A CAM threshold or a segmenter's bias means different object sizes for different backbones and data: broad
ImageNet CAMs at ISIM's 0.3 label about twice the objects, a segmenter trained on such labels keeps them, and one
trained on labels that miss parts keeps missing them. Sizing instead picks the background score at which the
labels, after the CRF, cover the prior's share of a sample of train images: round 0's CAM threshold
(``labels.threshold=share``), a round's CAM threshold (``iterate.threshold=share``, label_source=cam) and a
round's background bias (``iterate.logit_adjustment=share``, label_source=seg or cam+seg).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from isim.cam import class_scores
from isim.data.datamodule import WSSSDataModule
from isim.data.dataset import LabelledImages
from isim.models.classifier import Classifier
from isim.models.segmenter import Segmenter
from isim.pseudo_labels import LabelSettings, pseudo_labels

SAMPLE_IMAGES = 100  # train images spread over the list (``sample_names``): their labels are sized to the prior
BIAS_RANGE = 10.0  # nats the background's logit may be raised by
STEPS = 12  # bisection steps: the threshold to 1/4096, the bias to 1/200 nat


@dataclasses.dataclass
class ScoredSample:
    """Images (H, W, 3) with the per-class scores of their own classes (K, H, W), those classes' 1-based
    indices (K,) and the source's own background score (H, W), or None (CAMs: the threshold stands in)."""

    images: list[np.ndarray] = dataclasses.field(default_factory=list)
    scores: list[np.ndarray] = dataclasses.field(default_factory=list)
    classes: list[np.ndarray] = dataclasses.field(default_factory=list)
    backgrounds: list[np.ndarray | None] = dataclasses.field(default_factory=list)


# What a share mode solves on a sample for a share: a CAM threshold or a background bias.
Solver = Callable[[ScoredSample, LabelSettings, float, torch.device | None], float]


def score_sample(
    net: Classifier | Segmenter,
    datamodule: WSSSDataModule,
    data: LabelledImages,
    source: str,
    scales: Sequence[float],
    flip: bool,
    device: torch.device,
    offsets: Sequence[float] | None = None,
) -> ScoredSample:
    """The scores relabelling would compute (``class_scores``, ``offsets`` included) for ``sample_names``."""
    net = net.to(device).eval()
    offsets_tensor = None if offsets is None else torch.tensor(offsets)
    sample = ScoredSample()
    loader = datamodule.eval_dataloader(data.subset(sample_names(data.names)))
    for batch in tqdm(loader, desc="size prior sample", unit="batch", leave=False):
        labels = batch["labels"].to(device)
        scores, backgrounds = class_scores(net, batch["image"].to(device), labels, source, scales, flip, offsets_tensor)
        for i, name in enumerate(batch["name"]):
            classes = labels[i].nonzero().flatten()
            sample.images.append(data.read_image(name))
            sample.scores.append(scores[i, classes].float().cpu().numpy())
            sample.classes.append((classes + 1).cpu().numpy())
            sample.backgrounds.append(None if backgrounds is None else backgrounds[i].float().cpu().numpy())
    return sample


def sample_names(names: Sequence[str]) -> list[str]:
    """SAMPLE_IMAGES names at even steps through ``names`` (all of them if fewer). Lists are often ordered, by
    class (a CSV written class by class) or by year (VOC's), and their first images would size every class's
    labels to the few classes those show."""
    step = max(1.0, len(names) / SAMPLE_IMAGES)
    return [names[int(i * step)] for i in range(min(SAMPLE_IMAGES, len(names)))]


def covered(sample: ScoredSample, settings: LabelSettings, device: torch.device | None = None) -> float:
    """The share of the sample's pixels its labels (``settings``, after the CRF: the torch one on ``device``)
    make foreground."""
    labels = pseudo_labels(
        sample.images, sample.scores, sample.classes, settings, device or "cpu", backgrounds=sample.backgrounds
    )
    return sum(int((label > 0).sum()) for label in labels) / sum(label.size for label in labels)


def threshold_for_share(
    sample: ScoredSample, settings: LabelSettings, share: float, device: torch.device | None = None
) -> float:
    """The CAM background threshold whose labels cover ``share`` of the sample's pixels."""
    at = lambda threshold: covered(sample, dataclasses.replace(settings, threshold=threshold), device)  # noqa: E731
    return round(_bisect(at, share, 0.0, 1.0, rising=False), 6)


def background_bias_for_share(
    sample: ScoredSample, settings: LabelSettings, share: float, device: torch.device | None = None
) -> float:
    """How many nats to lower the sample's own background scores by (``LabelSettings.background_bias``) so that
    its labels cover ``share`` of the sample's pixels, at most 0: sizing shrinks the labels of the scores as they
    are (a segmenter's at tau = 1, which already hands its unsure pixels to the classes) but never grows them.
    Grown past them by a prior that was too high, whole images whose background the segmenter is unsure of flood
    with a class, more each round (held-out set, prior 23% high: round 2's labels 69.6 sized, 73.5 at tau = 1)."""
    at = lambda bias: covered(sample, dataclasses.replace(settings, background_bias=bias), device)  # noqa: E731
    if at(0.0) <= share:
        return 0.0
    return round(_bisect(at, share, -BIAS_RANGE, 0.0, rising=True), 6)


def _bisect(share_at: Callable[[float], float], share: float, low: float, high: float, rising: bool) -> float:
    """The x in [low, high] where ``share_at`` (monotone: rising or falling in x) reaches ``share``."""
    for _ in range(STEPS):
        middle = (low + high) / 2
        if (share_at(middle) < share) == rising:
            low = middle
        else:
            high = middle
    return (low + high) / 2
