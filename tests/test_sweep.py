"""Hydra multiruns: one directory, summary and W&B run per job, a comparison table, failed jobs
reported while the others run, DDP jobs without a duplicate sweep tree, the submitit launcher, and an
Optuna search."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import yaml

from tests.conftest import LABELS, TINY, read_summary, run_train
from tests.wandb_offline import offline_runs

SWEEP = ["--multirun", *TINY, "name=tiny", "cam.max_epochs=1"]


def sweep_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "sweep_summary.csv") as file:
        return list(csv.DictReader(file))


def test_backbone_sweep_with_a_bad_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun/backbones"
    result = run_train(
        tmp_path,
        *SWEEP,
        "model.backbone=resnet10t,resnet5,resnet14t",
        "logger=wandb",
        f"hydra.sweep.dir={sweep_dir}",
        check=False,
    )
    assert "model.backbone='resnet5' is not a timm model" in result.stderr
    for job, backbone in (("0", "resnet10t"), ("2", "resnet14t")):
        summary = read_summary(sweep_dir / job)
        assert summary["model"]["backbone"] == backbone and 0 < summary["cam"]["best_miou"] <= 1
        assert (sweep_dir / job / ".hydra/config.yaml").is_file()
    assert not (sweep_dir / "1/summary.json").exists()
    rows = sweep_rows(sweep_dir)
    assert [(row["job"], row["status"]) for row in rows] == [("0", "completed"), ("1", "failed"), ("2", "completed")]
    assert rows[2]["overrides"] == "model.backbone=resnet14t"  # what the jobs differ in
    assert float(rows[0]["cam.best_miou"]) == read_summary(sweep_dir / "0")["cam"]["best_miou"]
    runs = offline_runs(sweep_dir)
    assert len(runs) == 2 and {run.group for run in runs} == {"tiny"}  # one W&B run per completed job
    assert not (tmp_path / "runs").exists()


def test_ddp_jobs_in_a_sweep_leave_one_tree(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun/ddp"
    run_train(tmp_path, *SWEEP, "model.backbone=resnet10t,resnet14t", "trainer=ddp_cpu", f"hydra.sweep.dir={sweep_dir}")
    assert sorted(path.name for path in (tmp_path / "multirun").iterdir()) == ["ddp"]
    assert sorted(path.name for path in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml", "sweep_summary.csv"]
    assert [row["status"] for row in sweep_rows(sweep_dir)] == ["completed", "completed"]
    assert not (tmp_path / "runs").exists() and not list(sweep_dir.glob("*/*/.hydra"))
    assert len(list(sweep_dir.glob("*/*.log"))) == 2  # one log per job, not one per rank


def test_submitit_local_launch(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun/submitit"
    run_train(
        tmp_path, *SWEEP, "model.backbone=resnet10t", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}"
    )
    assert read_summary(sweep_dir / "0")["model"]["backbone"] == "resnet10t"
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert [row["status"] for row in sweep_rows(sweep_dir)] == ["completed"]


def test_optuna_search_over_the_crf(labelled_project: Path, tmp_path: Path) -> None:
    """Three trials of the labels stage on the CAM stage's classifier; the study's best is the best trial."""
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    shutil.copytree(labelled_project / "runs/tiny/cam", tmp_path / "runs/tiny/cam")
    sweep_dir = tmp_path / "multirun/optuna"
    run_train(
        tmp_path,
        *(override for override in LABELS if not override.startswith("labels.threshold=")),  # the search's key
        "hparams_search=crf_optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
    )
    trials = [read_summary(sweep_dir / str(job)) for job in range(3)]
    assert all(trial["stage"] == "labels" and trial["in_store"] == 24 for trial in trials)
    assert len({trial["threshold"] for trial in trials}) == 3  # the sampler's own draws, not the config's
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(trial["labels"]["miou"] for trial in trials)
    assert set(best["best_params"]) == {"labels.threshold", "crf.gt_prob", "crf.bilateral.srgb", "crf.bilateral.compat"}
    assert [row["status"] for row in sweep_rows(sweep_dir)] == ["completed"] * 3
