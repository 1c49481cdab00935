"""LightningModule that trains the CAM classifier on image-level labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score, MultilabelStatScores

from isim.models import Classifier
from isim.optim import sgd_poly


class ClassifierModule(pl.LightningModule):
    """Multi-label soft-margin training of :class:`~isim.models.Classifier`, mAP / F1 on validation over the
    classes that occur there."""

    def __init__(
        self,
        backbone: str,
        classes: Sequence[str],
        pretrained: bool | str = True,
        output_stride: int = 16,
        freeze_bn: bool = False,
        lr: float = 0.1,
        head_lr_mult: float = 10.0,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
    ) -> None:
        """``classes``: the dataset's class names, background first (the checkpoint records them)."""
        super().__init__()
        self.save_hyperparameters()
        foreground = len(classes) - 1
        self.net = Classifier(backbone, foreground, pretrained, output_stride, freeze_bn)
        # Per class, averaged over the classes with a positive image: a set that uses 6 of VOC's 20 classes would
        # otherwise score a perfect classifier 6/20 (torchmetrics gives an absent class AP 0).
        self.val_map = MultilabelAveragePrecision(num_labels=foreground, average=None)
        self.val_f1 = MultilabelF1Score(num_labels=foreground, average=None)
        self.val_counts = MultilabelStatScores(num_labels=foreground, average=None)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = F.multilabel_soft_margin_loss(self.net(batch["image"]), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.net(batch["image"])
        scores, labels = logits.sigmoid(), batch["labels"].int()
        for metric in (self.val_map, self.val_f1, self.val_counts):
            metric.update(scores, labels)
        self.log("val/loss", F.multilabel_soft_margin_loss(logits, batch["labels"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.validation_metrics(), prog_bar=True)
        for metric in (self.val_map, self.val_f1, self.val_counts):
            metric.reset()

    def validation_metrics(self) -> dict[str, torch.Tensor]:
        """mAP and F1 of this validation epoch, over the classes with at least one positive image."""
        present = self.val_counts.compute()[:, 4] > 0  # per class: tp, fp, tn, fn, support (positives)
        return {"val/mAP": self.val_map.compute()[present].mean(), "val/F1": self.val_f1.compute()[present].mean()}

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return sgd_poly(
            [(self.net.backbone.parameters(), 1.0), (self.net.head.parameters(), hp.head_lr_mult)],
            hp.lr,
            hp.momentum,
            hp.weight_decay,
            lambda: self.trainer.estimated_stepping_batches,
            hp.poly_power,
        )
