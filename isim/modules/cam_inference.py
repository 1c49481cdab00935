"""LightningModule that runs a trained classifier's CAMs over a split (``trainer.predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from isim.cam import class_scores
from isim.errors import IsimError
from isim.io import atomic_path
from isim.metrics import ThresholdSweep
from isim.models import Classifier
from isim.models.segmenter import Segmenter
from isim.pseudo_labels import LabelWriter


class CAMInference(pl.LightningModule):
    """Multi-scale + flip class scores per image (CAMs, or a segmenter's softmax: ``source``) into the
    threshold-sweep metric, and optionally into ``.npz`` files and a :class:`~isim.pseudo_labels.LabelWriter`;
    a few are kept for overlays."""

    def __init__(
        self,
        net: Classifier | Segmenter,  # anything with .cam(images)
        scales: Sequence[float],
        flip: bool,
        thresholds: Sequence[float],
        num_classes: int,
        save_dir: str | Path | None = None,
        keep: int = 8,
        writer: LabelWriter | None = None,
        source: str = "cam",
        offsets: Sequence[float] | None = None,  # logit adjustment of a segmenter's softmax (isim.cam)
    ) -> None:
        super().__init__()
        self.offsets = None if offsets is None else torch.tensor(offsets, dtype=torch.float32)
        self.net, self.scales, self.flip = net, tuple(scales), flip
        self.sweep = ThresholdSweep(thresholds, num_classes)
        self.save_dir = Path(save_dir) if save_dir else None
        self.keep, self.writer, self.source = keep, writer, source
        self.kept: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, class scores, GT mask)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for name, message in batch["errors"]:
            if self.writer is None:
                raise IsimError(message)
            self.writer.skip(name, message)
        if "image" not in batch:
            return
        cams, backgrounds = class_scores(
            self.net, batch["image"], batch["labels"], self.source, self.scales, self.flip, self.offsets
        )
        self.sweep.update(cams, batch["mask"])
        backgrounds = [None] * len(cams) if backgrounds is None else backgrounds  # CAMs have none: the threshold
        for name, cam, labels, mask, background in zip(
            batch["name"], cams, batch["labels"], batch["mask"], backgrounds, strict=True
        ):
            if self.save_dir is not None:
                save_cams(self.save_dir / f"{name}.npz", cam, labels)
            if self.writer is not None:
                classes = labels.nonzero().flatten()
                own = None if background is None else background.cpu().numpy()
                self.writer.submit(name, cam[classes].cpu().numpy(), (classes + 1).cpu().numpy(), own)
            if len(self.kept) < self.keep:
                self.kept.append((name, cam.cpu().numpy(), mask.cpu().numpy()))


def save_cams(path: Path, cams: torch.Tensor, labels: torch.Tensor) -> None:
    """The image's class maps only, as float16, with their 1-based class indices."""
    classes = labels.nonzero().flatten()
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, cams=cams[classes].cpu().half().numpy(), classes=(classes + 1).cpu().numpy())
