"""LightningModule that trains ISIM's segmenter on pseudo-labels and image-level labels jointly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from isim.data.classes import IGNORE_INDEX
from isim.metrics import iou_per_class
from isim.models.segmenter import Segmenter
from isim.optim import ParamGroup, sgd_poly


def joint_loss(
    masks: torch.Tensor,
    class_logits: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    seg_weight: float = 1.0,
    cls_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-label soft-margin on image labels + cross-entropy on pseudo-labels (255 ignored).

    Images whose pseudo-label has no foreground pixel are left out of the cross-entropy, as ISIM
    does: an all-background label of an image that has objects would teach the wrong thing.
    """
    cls = F.multilabel_soft_margin_loss(class_logits, labels)
    has_object = ((targets > 0) & (targets != IGNORE_INDEX)).flatten(1).any(1)
    targets = torch.where(has_object[:, None, None], targets, IGNORE_INDEX)
    if (targets != IGNORE_INDEX).any():
        seg = F.cross_entropy(masks, targets, ignore_index=IGNORE_INDEX)
    else:
        seg = masks.sum() * 0  # nothing to learn from in this batch, but keep the graph for DDP
    return seg_weight * seg + cls_weight * cls, {"seg": seg.detach(), "cls": cls.detach()}


class SegmenterModule(pl.LightningModule):
    """Joint training of :class:`~isim.models.segmenter.Segmenter`; validation mIoU against GT masks."""

    def __init__(
        self,
        backbone: str,
        classes: Sequence[str],
        decoder: str = "deeplabv3plus",
        pretrained: bool | str = True,
        output_stride: int = 16,
        decoder_args: dict[str, Any] | None = None,
        freeze_bn: bool = False,
        lr: float = 0.01,
        decoder_lr_mult: float = 10.0,
        head_lr_mult: float = 10.0,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        seg_weight: float = 1.0,
        cls_weight: float = 1.0,
    ) -> None:
        """``classes``: the dataset's class names, background first (the checkpoint records them)."""
        super().__init__()
        self.save_hyperparameters()
        self.net = Segmenter(backbone, len(classes), decoder, pretrained, output_stride, decoder_args, freeze_bn)
        # A confusion matrix rather than JaccardIndex: classes absent from both prediction and GT must not
        # count as IoU 0 in the mean.
        self.val_confusion = MulticlassConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX)
        self.last_val_iou: list[float] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        masks, class_logits = self.net(batch["image"])
        loss, parts = joint_loss(
            masks, class_logits, batch["labels"], batch["mask"], self.hparams.seg_weight, self.hparams.cls_weight
        )
        self.log_dict({"train/loss": loss, "train/seg": parts["seg"], "train/cls": parts["cls"]}, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        masks, _ = self.net(batch["image"])
        self.val_confusion.update(masks.argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        iou = iou_per_class(self.val_confusion.compute())
        self.last_val_iou = iou.tolist()
        self.log("val/mIoU", iou.nanmean().float(), prog_bar=True)
        self.val_confusion.reset()

    def lr_groups(self) -> list[ParamGroup]:
        """Encoder at ``lr``, decoder at ``decoder_lr_mult`` x and classification head at ``head_lr_mult`` x it."""
        hp, groups = self.hparams, self.net.param_groups()
        multiples = {"encoder": 1.0, "decoder": hp.decoder_lr_mult, "head": hp.head_lr_mult}
        return [(groups[name], multiples[name]) for name in groups]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return sgd_poly(
            self.lr_groups(),
            hp.lr,
            hp.momentum,
            hp.weight_decay,
            lambda: self.trainer.estimated_stepping_batches,
            hp.poly_power,
        )
