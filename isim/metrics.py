"""Segmentation metrics from confusion matrices, and the CAM background-threshold sweep.

Confusion matrices are torchmetrics states with sum reduction, so under DDP every rank's pixels
count exactly once and the result equals the single-process one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from isim.data.classes import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction; 255 ignored."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of every class; NaN for a class that is in neither the ground truth nor the prediction."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    return torch.where(union > 0, hits / union.clamp(min=1), torch.nan)


def mean_iou(confusion: torch.Tensor) -> float:
    return float(iou_per_class(confusion).nanmean())


def labels_from_cams(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixel labels from normalised foreground CAMs (B, C-1, H, W): class of the top CAM, or 0 below ``threshold``."""
    peak, index = cams.max(1)
    return torch.where(peak > threshold, index + 1, 0)


class ThresholdSweep(Metric):
    """Confusion matrices of CAM-derived labels for every background threshold at once."""

    full_state_update = False

    def __init__(self, thresholds: Sequence[float], num_classes: int) -> None:
        super().__init__()
        self.thresholds = [float(t) for t in thresholds]
        self.num_classes = num_classes
        self.add_state(
            "confusion",
            torch.zeros(len(self.thresholds), num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, cams: torch.Tensor, masks: torch.Tensor) -> None:
        for i, threshold in enumerate(self.thresholds):
            pred = labels_from_cams(cams, threshold)
            self.confusion[i] += confusion_matrix(pred, masks, self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.confusion


def sweep_report(confusion: torch.Tensor, thresholds: Sequence[float], class_names: Sequence[str]) -> dict:
    """The sweep as plain data: per-threshold mIoU and per-class IoU, and the best threshold."""
    rows = []
    for threshold, matrix in zip(thresholds, confusion, strict=True):
        ious = iou_per_class(matrix)
        rows.append(
            {
                "threshold": round(float(threshold), 4),
                "miou": _finite(mean_iou(matrix)),
                "per_class_iou": {name: _finite(iou) for name, iou in zip(class_names, ious.tolist(), strict=True)},
            }
        )
    if not confusion.sum():  # no GT pixel at all (a dataset without masks): nothing to choose from
        return {
            "best_threshold": None,
            "best_miou": None,
            "best_at_edge": False,
            "best_per_class_iou": {},
            "sweep": rows,
        }
    best = max(rows, key=lambda row: row["miou"])
    ends = (min(row["threshold"] for row in rows), max(row["threshold"] for row in rows))
    return {
        "best_threshold": best["threshold"],
        "best_miou": best["miou"],
        # The best at the lowest or highest threshold swept: the true optimum may lie beyond the range.
        "best_at_edge": len(rows) > 1 and best["threshold"] in ends,
        "best_per_class_iou": best["per_class_iou"],
        "sweep": rows,
    }


def _finite(value: float) -> float | None:
    return None if value != value else value  # NaN (class absent) becomes JSON null


def segmentation_report(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """mIoU with per-class IoU, precision and recall (NaN / null where a class is absent)."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    precision = torch.where(confusion.sum(0) > 0, hits / confusion.sum(0).clamp(min=1), torch.nan)
    recall = torch.where(confusion.sum(1) > 0, hits / confusion.sum(1).clamp(min=1), torch.nan)
    per_class = {
        name: {"iou": _finite(iou), "precision": _finite(p), "recall": _finite(r)}
        for name, iou, p, r in zip(
            class_names, iou_per_class(confusion).tolist(), precision.tolist(), recall.tolist(), strict=True
        )
    }
    return {"miou": mean_iou(confusion), "per_class": per_class}
