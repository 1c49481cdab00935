"""LightningModule that segments images with a trained segmenter (``trainer.predict``; shards over DDP ranks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torchmetrics.classification import MulticlassConfusionMatrix

from isim.cam import multiscale_flip
from isim.crf import crf_scores
from isim.data import IGNORE_INDEX, voc_palette
from isim.io import write_png
from isim.models.segmenter import Segmenter
from isim.visualize import blend, colorize


class SegmenterPrediction(pl.LightningModule):
    """Softmax averaged over ``scales`` (and flips) -> a VOC-palette mask PNG per image in ``masks_dir`` (and an
    overlay in ``overlay_dir``, if given), refined by the dense CRF when ``crf`` is given; the confusion matrix
    against GT where an image has any."""

    def __init__(
        self,
        net: Segmenter,
        num_classes: int,
        scales: Sequence[float],
        flip: bool,
        masks_dir: str | Path,
        crf: DictConfig | None = None,
        overlay_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.net, self.scales, self.flip, self.crf = net, tuple(scales), flip, crf
        self.masks_dir, self.overlay_dir = Path(masks_dir), Path(overlay_dir) if overlay_dir else None
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
        self.palette = voc_palette()

    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int) -> dict:
        # Only the network input moves: raw pixels and masks serve the CRF, the PNGs and the metric on the host.
        return {**batch, "image": batch["image"].to(device)}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        probs = multiscale_flip(lambda x: self.net(x)[0].softmax(1), batch["image"], self.scales, self.flip)
        raws = list(batch["raw"].numpy())
        for name, pred, raw, mask in zip(batch["name"], self.segment(raws, probs), raws, batch["mask"], strict=True):
            write_png(self.masks_dir / f"{name}.png", pred, self.palette)
            if self.overlay_dir is not None:
                write_png(self.overlay_dir / f"{name}.png", blend(raw, colorize(pred)))
            self.confusion.update(torch.from_numpy(pred).long()[None].to(self.device), mask[None].to(self.device))

    def segment(self, raws: list[np.ndarray], probs: torch.Tensor) -> list[np.ndarray]:
        """Class-index masks: the argmax of ``probs`` (B, C, H, W), or its dense CRF refinement (the torch backend
        on this module's device, the batch in one call)."""
        if self.crf is None:
            return list(probs.argmax(1).to(torch.uint8).cpu().numpy())
        crf = self.crf
        probs = list(probs / probs.sum(1, keepdim=True))
        return crf_scores(raws, probs, crf.gaussian, crf.bilateral, crf.iterations, crf.backend, self.device)
