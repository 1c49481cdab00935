"""mIoU from confusion matrices, checked against torchmetrics, the threshold sweep, and the classifier's mAP."""

from __future__ import annotations

import math

import torch
from torchmetrics.classification import MulticlassJaccardIndex, MultilabelAveragePrecision, MultilabelF1Score

from isim.data import VOC_CLASSES
from isim.metrics import ThresholdSweep, confusion_matrix, iou_per_class, labels_from_cams, mean_iou, sweep_report
from isim.modules import ClassifierModule


def test_iou_matches_torchmetrics_with_ignored_pixels() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (4, 32, 32), generator=gen)
    target[:, :3] = 255
    pred = torch.where(
        torch.rand(target.shape, generator=gen) < 0.6,
        target.clamp(max=5),
        torch.randint(0, 6, target.shape, generator=gen),
    )
    ours = iou_per_class(confusion_matrix(pred, target, 6))
    reference = MulticlassJaccardIndex(num_classes=6, ignore_index=255, average="none")(pred, target)
    torch.testing.assert_close(ours.float(), reference)
    assert math.isclose(mean_iou(confusion_matrix(pred, target, 6)), float(reference.mean()), rel_tol=1e-6)


def test_absent_classes_do_not_count_in_the_mean() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 0, 1, 0]])
    ious = iou_per_class(confusion_matrix(pred, target, 4))
    assert ious[:2].tolist() == [2 / 3, 1 / 2] and ious[2:].isnan().all()
    assert math.isclose(mean_iou(confusion_matrix(pred, target, 4)), (2 / 3 + 1 / 2) / 2)


def test_threshold_sweep_equals_one_confusion_per_threshold() -> None:
    gen = torch.Generator().manual_seed(1)
    cams = torch.rand(3, 4, 16, 16, generator=gen)
    masks = torch.randint(0, 5, (3, 16, 16), generator=gen)
    thresholds = [0.2, 0.5, 0.9]
    sweep = ThresholdSweep(thresholds, num_classes=5)
    sweep.update(cams[:2], masks[:2])
    sweep.update(cams[2:], masks[2:])
    for i, threshold in enumerate(thresholds):
        expected = confusion_matrix(labels_from_cams(cams, threshold), masks, 5)
        assert torch.equal(sweep.compute()[i], expected)
    report = sweep_report(sweep.compute(), thresholds, ["bg", "a", "b", "c", "d"])
    assert report["best_miou"] == max(row["miou"] for row in report["sweep"])
    assert report["best_threshold"] in thresholds and set(report["best_per_class_iou"]) == {"bg", "a", "b", "c", "d"}


def test_labels_from_cams_uses_background_below_threshold() -> None:
    cams = torch.tensor([[[[0.1, 0.6]], [[0.3, 0.2]]]])  # 2 classes, 1x2 image
    assert labels_from_cams(cams, 0.25).tolist() == [[[2, 1]]]
    assert labels_from_cams(cams, 0.5).tolist() == [[[0, 1]]]


def test_a_sweep_whose_best_is_an_end_of_the_range_says_so() -> None:
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, :, :4] = 1
    cams = torch.full((1, 1, 8, 8), 0.6)  # class 1 everywhere at 0.6: thresholds above it find the background
    cams[0, 0, :, :4] = 0.9
    rising = sweep_report(confusion_for(cams, masks, [0.3, 0.5, 0.7]), [0.3, 0.5, 0.7], ["bg", "a"])
    assert rising["best_threshold"] == 0.7 and rising["best_at_edge"]
    peaked = sweep_report(confusion_for(cams, masks, [0.3, 0.7, 0.95]), [0.3, 0.7, 0.95], ["bg", "a"])
    assert peaked["best_threshold"] == 0.7 and not peaked["best_at_edge"]


def confusion_for(cams: torch.Tensor, masks: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    sweep = ThresholdSweep(thresholds, num_classes=2)
    sweep.update(cams, masks)
    return sweep.compute()


def test_classifier_val_map_counts_only_the_classes_that_occur() -> None:
    """A VOC-layout set with 6 of the 20 classes (the held-out synthetic set): mAP and F1 are those of the 6,
    in two validation batches; averaged over all 20, absent classes scored 0 and a perfect classifier 0.30."""
    module = ClassifierModule("resnet18", list(VOC_CLASSES), pretrained=False)  # background + 20
    gen = torch.Generator().manual_seed(0)
    labels = torch.zeros(40, 20, dtype=torch.int)
    labels[:, :6] = torch.randint(0, 2, (40, 6), generator=gen)
    scores = (0.5 * labels + 0.6 * torch.rand(40, 20, generator=gen)).clamp(0, 1)  # good, not perfect
    for batch in (slice(0, 25), slice(25, 40)):
        for metric in (module.val_map, module.val_f1, module.val_counts):
            metric.update(scores[batch], labels[batch])
    metrics = module.validation_metrics()
    expected_map = MultilabelAveragePrecision(num_labels=6)(scores[:, :6], labels[:, :6])
    expected_f1 = MultilabelF1Score(num_labels=6)(scores[:, :6], labels[:, :6])
    assert 0.5 < expected_map < 1 and 0.5 < expected_f1 < 1
    assert torch.isclose(metrics["val/mAP"], expected_map) and torch.isclose(metrics["val/F1"], expected_f1)
    assert MultilabelAveragePrecision(num_labels=20)(scores, labels) < 0.3 * expected_map + 1e-6
