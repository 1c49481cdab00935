"""``python train.py stage=cam`` for real, on a tiny generated set: outputs, resume, determinism, W&B."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, TINY_RUN, copy_data_with_subset, kill_when, read_summary, run_train

# CAMs saved, one image a CAM batch (so that a kill can land between two CAM files): the kill test's run, and
# the uninterrupted one it must end equal to.
CAM = [*TINY, "name=tiny", "cam.save=true", "data.eval_batch_size=1"]


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cam")
    run_train(root, *CAM)
    return root


def test_cam_stage_writes_summary_checkpoint_cams_and_overlays(cam_run: Path) -> None:
    run_dir = cam_run / "runs/tiny/cam"
    summary = read_summary(run_dir)
    cam = summary["cam"]
    assert summary["stage"] == "cam" and summary["data"]["images"] == 24
    assert [row["threshold"] for row in cam["sweep"]] == pytest.approx([0.05 * i for i in range(1, 15)])
    assert cam["best_miou"] == max(row["miou"] for row in cam["sweep"])
    assert cam["best_at_edge"] == (cam["best_threshold"] in (0.05, 0.7))
    assert 0 < cam["all_background_miou"] < 1 and len(cam["best_per_class_iou"]) == 21
    assert "val/mAP" in summary["classifier"] and summary["timings"]["train_s"] > 0
    assert (run_dir / "checkpoints/last.ckpt").is_file() and (run_dir / ".hydra/config.yaml").is_file()
    assert len(list((run_dir / "overlays").glob("*.png"))) == 2
    files = sorted((run_dir / "cams").glob("*.npz"))
    assert len(files) == 24
    # One map per class of the image, max-normalised (all 0 where the tiny classifier never fires).
    fired = 0
    for file in files:
        saved = np.load(file)
        peaks = torch.from_numpy(saved["cams"]).float().amax((1, 2))
        assert len(peaks) == len(saved["classes"]) > 0 and saved["classes"].min() >= 1
        # max / (max + 1e-5): 1 for any real activation, a little less for a barely-firing map
        assert (peaks <= 1).all() and ((peaks == 0) | (peaks > 0.9)).all()
        fired += int((peaks > 0).sum())
    assert fired >= len(files) // 2
    assert cam["best_miou"] > cam["all_background_miou"] + 0.03  # even the tiny classifier localises something


def test_rerun_resumes_the_finished_run_and_gives_the_same_numbers(cam_run: Path) -> None:
    first = read_summary(cam_run / "runs/tiny/cam")
    history = (cam_run / "runs/tiny/cam/csv/metrics.csv").read_text().splitlines()
    result = run_train(cam_run, *CAM)
    assert "resuming from" in result.stdout + result.stderr
    again = read_summary(cam_run / "runs/tiny/cam")
    assert again["model"]["epochs"] == first["model"]["epochs"]
    assert again["cam"]["sweep"] == first["cam"]["sweep"]
    assert again["classifier"] == first["classifier"]  # validated again: the finished model's figures, not NaN
    continued = (cam_run / "runs/tiny/cam/csv/metrics.csv").read_text().splitlines()
    assert len(history) > 2 and continued[: len(history)] == history  # the CSV history survives the resume


def test_killed_in_training_then_in_cam_inference_the_stage_resumes_to_the_same_numbers(
    cam_run: Path, labelled_project: Path, tmp_path: Path
) -> None:
    """kill -9 after the first of 2 epochs, then again once CAMs are being written: the re-runs train only the
    epoch left (none twice), make every CAM, and end with the uninterrupted run's numbers (each epoch is seeded
    from the seed and its number); what a kill loses is the epoch in progress."""
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    run_dir = tmp_path / "runs/tiny/cam"
    last = run_dir / "checkpoints/last.ckpt"
    kill_when(tmp_path, last.is_file, *CAM)
    assert torch.load(last, weights_only=False)["epoch"] == 0 and not (run_dir / "summary.json").exists()
    kill_when(tmp_path, lambda: any((run_dir / "cams").glob("*.npz")), *CAM)
    assert len(list((run_dir / "cams").glob("*.npz"))) < 24 and not (run_dir / "summary.json").exists()
    assert torch.load(last, weights_only=False)["epoch"] == 1  # training had finished: this kill hit the CAMs
    result = run_train(tmp_path, *CAM)
    assert "resuming from" in result.stdout + result.stderr
    summary, uninterrupted = read_summary(run_dir), read_summary(cam_run / "runs/tiny/cam")
    assert summary["model"]["epochs"] == 2 and torch.load(last, weights_only=False)["global_step"] == 2 * 3
    assert summary["data"]["images"] == 24 and len(list((run_dir / "cams").glob("*.npz"))) == 24
    assert summary["classifier"] == uninterrupted["classifier"] and summary["cam"] == uninterrupted["cam"]
    with open(run_dir / "csv/metrics.csv", newline="") as file:
        validated = [row["epoch"] for row in csv.DictReader(file) if row.get("val/mAP")]
    assert validated == ["0", "1"]  # each epoch validated once


def test_cam_train_false_scores_a_given_checkpoint_in_cam_eval(cam_run: Path) -> None:
    trained = read_summary(cam_run / "runs/tiny/cam")
    checkpoint = cam_run / "runs/tiny/cam/checkpoints/last.ckpt"
    run_train(cam_run, *CAM, "cam.train=false", f"ckpt_path={checkpoint}")
    scored = read_summary(cam_run / "runs/tiny/cam-eval")
    assert scored["cam"]["sweep"] == trained["cam"]["sweep"]  # the same network's CAMs, not retrained
    assert scored["model"] == {"backbone": "resnet10t", "checkpoint": str(checkpoint), "network": "Classifier"}
    assert scored["classifier"] == {} and read_summary(cam_run / "runs/tiny/cam") == trained  # cam/ untouched
    missing = run_train(cam_run, *TINY, "name=tiny", "cam.train=false", check=False)
    assert missing.returncode == 2 and "cam.train=false scores a checkpoint's CAMs: give ckpt_path=" in missing.stderr


def test_resume_refuses_a_checkpoint_of_other_settings(cam_run: Path) -> None:
    result = run_train(cam_run, *TINY, "name=tiny", "model.classifier.lr=0.5", check=False)
    assert result.returncode == 2 and "lr: 0.01 -> 0.5" in result.stderr and "name=<new name>" in result.stderr


def test_same_seed_same_metrics_and_wandb_offline_run(cam_run: Path, tmp_path: Path) -> None:
    result = run_train(tmp_path, *CAM, "logger=wandb")
    summary = read_summary(tmp_path / "runs/tiny/cam")
    assert summary["cam"]["sweep"] == read_summary(cam_run / "runs/tiny/cam")["cam"]["sweep"], result.stdout[-500:]
    runs = list((tmp_path / "runs/tiny/cam/wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_another_backbone_on_a_voc_layout_directory(tiny_voc: Path, tmp_path: Path) -> None:
    run_train(tmp_path, *TINY_RUN, "data=voc12", f"data.root={tiny_voc}", "name=other", "model.backbone=resnet14t")
    summary = read_summary(tmp_path / "runs/other/cam")
    assert summary["model"]["backbone"] == "resnet14t" and summary["data"]["name"] == "voc12"
    assert summary["data"]["root"] == str(tiny_voc) and summary["data"]["images"] == 24


def test_ddp_keeps_the_global_batch(tmp_path: Path) -> None:
    """Two gloo processes with data.batch_size=8 load 4 images each: 24 images, 2 epochs = 6 steps, as on one."""
    run_train(tmp_path, *TINY, "name=ddp", "trainer=ddp_cpu", "data.batch_size=8")
    checkpoint = torch.load(tmp_path / "runs/ddp/cam/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 6 and read_summary(tmp_path / "runs/ddp/cam")["cam"]["best_miou"] > 0
    result = run_train(tmp_path, *TINY, "name=odd", "trainer=ddp_cpu", "data.batch_size=7", check=False)
    assert result.returncode == 2 and "data.batch_size=7 is the global batch and must divide by the 2" in result.stderr
    assert not (tmp_path / "runs/odd/cam/checkpoints").exists()  # refused before training started


def test_ddp_cam_evaluation_equals_one_process(labelled_project: Path, tmp_path: Path) -> None:
    """The same classifier evaluated on 23 images by 1 process and by 2 gloo ranks (12 + 11 images, none
    repeated) gives the same sweep; rank 1 keeps no log file of its own."""
    odd = copy_data_with_subset(labelled_project, tmp_path, "train", 23)
    summaries = {}
    for trainer in ("cpu", "ddp_cpu"):
        run_dir = tmp_path / f"runs/tiny/cam_{trainer}"
        shutil.copytree(labelled_project / "runs/tiny/cam/checkpoints", run_dir / "checkpoints")
        # Training is complete: the stage resumes from last.ckpt and only evaluates.
        run_train(tmp_path, *TINY, "name=tiny", f"trainer={trainer}", f"cam.split={odd}", f"hydra.run.dir={run_dir}")
        summaries[trainer] = read_summary(run_dir)
    single, ddp = summaries["cpu"], summaries["ddp_cpu"]
    assert ddp["data"]["images"] == single["data"]["images"] == 23
    assert ddp["cam"]["sweep"] == single["cam"]["sweep"] and ddp["cam"]["best_miou"] > 0
    assert sorted(path.name for path in (tmp_path / "runs/tiny/cam_ddp_cpu").glob("*.log")) == ["train.log"]


def test_a_run_dir_in_use_is_refused_and_a_dead_holders_lock_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs/tiny/cam"
    run_dir.mkdir(parents=True)
    lock = run_dir / ".isim.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-11-26 09:00:00"}))
    busy = run_train(tmp_path, *TINY, "name=tiny", check=False)  # this test's own process holds it: alive
    assert busy.returncode == 2 and f"is in use by pid {os.getpid()} on {socket.gethostname()}" in busy.stderr
    assert "2026-11-26 09:00:00" in busy.stderr and not (run_dir / "summary.json").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    run_train(tmp_path, *TINY, "name=tiny")  # kill -9 left it: taken over
    assert read_summary(run_dir)["stage"] == "cam" and not lock.exists()  # released at the end
