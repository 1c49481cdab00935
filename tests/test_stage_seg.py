"""``python train.py stage=seg``: the segmenter on a label store and on GT masks, and store checks."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import LABELS, ROOT, TINY, read_summary, run_train

SEG = [*TINY, "name=tiny", "stage=seg", "seg.max_epochs=1"]


def test_segmenter_trains_on_the_store_and_on_gt(labelled_project: Path) -> None:
    run_train(labelled_project, *SEG)
    summary = read_summary(labelled_project / "runs/tiny/seg")
    assert summary["labels"].endswith("runs/tiny/labels/store") and summary["epochs"] == 1
    assert 0 <= summary["val"]["miou"] <= 1 and len(summary["val"]["per_class_iou"]) == 21
    assert (labelled_project / "runs/tiny/seg/checkpoints/last.ckpt").is_file()
    # ISIM's next round: labels from the segmenter's own CAMs, through the same labels stage.
    checkpoint = labelled_project / "runs/tiny/seg/checkpoints/last.ckpt"
    run_train(
        labelled_project,
        *LABELS,
        f"ckpt_path={checkpoint}",
        "labels.threshold=0.2",
        "hydra.run.dir=runs/tiny/labels_from_seg",
    )
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


def test_a_dead_rank_stops_the_run_with_a_clear_message(labelled_project: Path, tmp_path: Path) -> None:
    """SIGKILL of rank 1 mid-training: rank 0 stops within seconds (no wait for the 10-minute collective
    timeout) and says what happened; the same command resumes from the epoch's checkpoint."""
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    command = [sys.executable, str(ROOT / "train.py"), *SEG, "data.labels=gt", "seg.max_epochs=500", "trainer=ddp_cpu"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    log = tmp_path / "output.txt"  # a file, not a pipe: nobody reads a pipe while the run goes on, and it would fill
    with open(log, "w") as output:
        main = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        checkpoint = tmp_path / "runs/tiny/seg/checkpoints/last.ckpt"
        deadline = time.monotonic() + 180
        while not checkpoint.is_file() and main.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # until an epoch is done: both ranks are in the training loop
        assert main.poll() is None and checkpoint.is_file(), "the DDP run did not get to its first checkpoint"
        rank_1 = child_processes(main.pid)
        assert len(rank_1) == 1
        os.kill(rank_1[0], signal.SIGKILL)
        killed = time.monotonic()
        main.wait(timeout=120)
    finally:
        main.kill()
    output = log.read_text()
    assert main.returncode != 0 and time.monotonic() - killed < 60
    # Rank 0 either sees the connection drop first, or Lightning's process observer (5 s polls) ends it.
    assert "rank 0: another process of this DDP run stopped" in output or "terminated with code -9" in output, output[
        -2000:
    ]
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
    run_train(tmp_path, *SEG, "data.labels=gt", f"seg.max_epochs={epoch + 2}", "trainer=ddp_cpu")
    assert read_summary(tmp_path / "runs/tiny/seg")["epochs"] == epoch + 2
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == ["last.ckpt"]


def child_processes(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]
