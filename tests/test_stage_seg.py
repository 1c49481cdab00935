"""``python train.py stage=seg``: the segmenter on a label store and on GT masks, and store checks."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from tests.conftest import LABELS, TINY, read_summary, run_train

SEG = [*TINY, "name=tiny", "stage=seg", "seg.max_epochs=1"]


def test_segmenter_trains_on_the_store_and_on_gt(labelled_project: Path) -> None:
    run_train(labelled_project, *SEG)
    summary = read_summary(labelled_project / "runs/tiny/seg")
    assert summary["labels"].endswith("runs/tiny/labels/store") and summary["epochs"] == 1
    assert 0 <= summary["val"]["miou"] <= 1 and len(summary["val"]["per_class_iou"]) == 21
    assert (labelled_project / "runs/tiny/seg/checkpoints/last.ckpt").is_file()
    # ISIM's next round: labels from the segmenter's own CAMs, through the same labels stage.
    checkpoint = labelled_project / "runs/tiny/seg/checkpoints/last.ckpt"
    run_train(labelled_project, *LABELS, f"ckpt_path={checkpoint}", "labels.threshold=0.2",
              "hydra.run.dir=runs/tiny/labels_from_seg")  # fmt: skip
    relabelled = read_summary(labelled_project / "runs/tiny/labels_from_seg")
    assert relabelled["in_store"] == 24 and relabelled["checkpoint"] == str(checkpoint)
    assert 0 < relabelled["labels"]["miou"] <= 1
    run_train(labelled_project, *SEG, "data.labels=gt", "hydra.run.dir=runs/tiny/seg_gt")
    reference = read_summary(labelled_project / "runs/tiny/seg_gt")
    assert reference["labels"] == "gt" and not math.isnan(reference["val"]["miou"])


def test_incomplete_or_missing_store_is_refused(labelled_project: Path, tmp_path: Path) -> None:
    shutil.copytree(labelled_project / "runs/tiny/labels", tmp_path / "runs/tiny/labels")
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    (tmp_path / "runs/tiny/labels/store/synthetic_00003.png").unlink()
    result = run_train(tmp_path, *SEG, check=False)
    assert result.returncode == 2 and "is incomplete (1 of 24 training images missing" in result.stderr
    assert "synthetic_00003" in result.stderr and "re-run stage=labels" in result.stderr
    result = run_train(tmp_path, *SEG, f"data.labels={tmp_path}/nowhere", check=False)
    assert result.returncode == 2 and "is not a label store" in result.stderr and "data.labels=gt" in result.stderr
