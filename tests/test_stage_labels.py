"""``python train.py stage=labels`` for real: a complete store, resume after a kill, refusals, DDP."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from isim.pseudo_labels import LabelStore
from tests.conftest import LABELS, kill_when, read_summary, run_train


@pytest.fixture
def project(labelled_project: Path) -> Path:
    return labelled_project


def store_arrays(store_dir: Path) -> dict[str, np.ndarray]:
    store = LabelStore(store_dir)
    return {p.stem: store.read(p.stem) for p in sorted(store_dir.glob("*.png"))}


def store_share(store_dir: Path) -> float:
    """The share of the store's label pixels that are foreground."""
    labels = store_arrays(store_dir).values()
    return sum(int((label > 0).sum()) for label in labels) / sum(label.size for label in labels)


def copy_cam_stage(project: Path, target: Path) -> None:
    """The project's data and CAM stage, in a fresh project ``target`` whose labels stage has not run."""
    shutil.copytree(project / "runs/tiny/cam", target / "runs/tiny/cam")
    shutil.copytree(project / "data", target / "data")


def pixel_agreement(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    """The fraction of all pixels of two stores (of the same images) with the same label."""
    assert first.keys() == second.keys() and first
    return sum(int((first[k] == second[k]).sum()) for k in first) / sum(first[k].size for k in first)


def test_labels_stage_writes_a_complete_evaluated_store(project: Path) -> None:
    run_dir = project / "runs/tiny/labels"
    summary = read_summary(run_dir)
    manifest = LabelStore(run_dir / "store").manifest()
    assert manifest["complete"] and manifest["counts"]["in_store"] == 24 == summary["in_store"]
    assert manifest["checkpoint"].endswith("runs/tiny/cam/checkpoints/last.ckpt")
    assert len(list((run_dir / "store").glob("*.png"))) == 24 and summary["skipped"] == {}
    cam = read_summary(project / "runs/tiny/cam")["cam"]
    assert summary["threshold"] == 0.15 and summary["cam_best_miou"] == cam["best_miou"]  # the preset's constant
    (at_threshold,) = [row["miou"] for row in cam["sweep"] if row["threshold"] == 0.15]
    assert summary["cam_miou_at_threshold"] == at_threshold  # the CAMs before the CRF, against labels.miou
    assert summary["uses_gt"] is False and read_summary(project / "runs/tiny/cam")["uses_gt"] is False
    labels = summary["labels"]
    assert 0 < labels["miou"] <= 1 and set(labels["per_class"]["background"]) == {"iou", "precision", "recall"}
    assert labels["ignored_fraction"] == 0  # single-threshold mode ignores nothing
    assert len(list((run_dir / "overlays").glob("*.png"))) == 2


def test_oracle_threshold_is_the_gt_best_and_says_so(project: Path, tmp_path: Path) -> None:
    copy_cam_stage(project, tmp_path)
    run_train(tmp_path, *LABELS, "labels.threshold=oracle")
    summary = read_summary(tmp_path / "runs/tiny/labels")
    assert summary["threshold"] == read_summary(project / "runs/tiny/cam")["cam"]["best_threshold"]
    assert summary["uses_gt"] is True


def test_without_gt_masks_the_pipeline_makes_the_same_labels(project: Path, tiny_voc: Path, tmp_path: Path) -> None:
    """GT masks only score: a copy of the data without them gives byte-identical labels, and says it cannot score."""
    data = Path(shutil.copytree(tiny_voc, tmp_path / "voc"))
    shutil.rmtree(data / "SegmentationClass")
    no_masks = [f"data.root={data}", "data.synthetic=null"]
    run_train(tmp_path, *LABELS, *no_masks, "stage=cam")
    run_train(tmp_path, *LABELS, *no_masks)
    cam, labels = read_summary(tmp_path / "runs/tiny/cam")["cam"], read_summary(tmp_path / "runs/tiny/labels")
    assert cam["best_miou"] is None and cam["best_threshold"] is None and not cam["best_at_edge"]
    assert labels["labels"]["scored"] is False and labels["labels"]["miou"] is None
    ours, reference = tmp_path / "runs/tiny/labels/store", project / "runs/tiny/labels/store"
    names = sorted(p.name for p in reference.glob("*.png"))
    assert names == sorted(p.name for p in ours.glob("*.png")) and len(names) == 24
    assert all((ours / name).read_bytes() == (reference / name).read_bytes() for name in names)
    oracle = run_train(tmp_path, *LABELS, *no_masks, "labels.threshold=oracle", "labels.overwrite=true", check=False)
    assert oracle.returncode == 2 and "labels.threshold=oracle needs GT masks" in oracle.stderr


def test_share_threshold_sizes_the_labels_to_the_prior(project: Path, tmp_path: Path) -> None:
    """``labels.threshold=share``: the CAM threshold whose labels, after the CRF, cover labels.foreground_share of
    the (100, here all 24) train images' pixels; a larger prior, a lower threshold and larger labels. A
    resumed store takes the threshold recorded when it started."""
    copy_cam_stage(project, tmp_path)
    missing = run_train(tmp_path, *LABELS, "labels.threshold=share", "labels.foreground_share=null", check=False)
    assert missing.returncode == 2 and "labels.foreground_share=None must be in (0, 1)" in missing.stderr
    thresholds = []
    for prior in (0.1, 0.3):
        run_train(
            tmp_path, *LABELS, "labels.threshold=share", f"labels.foreground_share={prior}", "labels.overwrite=true"
        )
        summary = read_summary(tmp_path / "runs/tiny/labels")
        share = store_share(tmp_path / "runs/tiny/labels/store")
        assert share == pytest.approx(prior, abs=0.02) and summary["uses_gt"] is False
        thresholds.append(summary["threshold"])
    assert thresholds[0] > thresholds[1]
    store = tmp_path / "runs/tiny/labels/store"
    record = json.loads((store / "sized.json").read_text())
    assert record["value"] == thresholds[1] and record["made_for"]["share"] == 0.3
    for png in sorted(store.glob("*.png"))[:3]:  # a crash mid-store: the rerun resumes at the recorded threshold
        png.unlink()
    sized = (*LABELS, "labels.threshold=share", "labels.foreground_share=0.3")
    run_train(tmp_path, *sized)
    assert read_summary(tmp_path / "runs/tiny/labels")["labelled_now"] == 3
    (store / "sized.json").write_text(json.dumps({**record, "value": 0.5}))  # the record, not a recomputation
    refused = run_train(tmp_path, *sized, check=False)
    assert refused.returncode == 2 and "differs in settings" in refused.stderr


def test_rerun_labels_only_what_is_missing(project: Path) -> None:
    store_dir = project / "runs/tiny/labels/store"
    before = store_arrays(store_dir)
    for name in list(before)[:5]:
        (store_dir / f"{name}.png").unlink()
    (store_dir / f"{list(before)[5]}.png").write_bytes(b"")  # a disk that filled up
    damaged = store_dir / f"{list(before)[6]}.png"
    damaged.write_bytes(damaged.read_bytes()[:40])  # a copy cut short
    run_train(project, *LABELS)
    summary = read_summary(project / "runs/tiny/labels")
    assert summary["labelled_now"] == 7 and summary["in_store"] == 24
    after = store_arrays(store_dir)
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    run_train(project, *LABELS)  # nothing missing: an empty predict run
    assert (
        read_summary(project / "runs/tiny/labels")["labelled_now"] == 0
        and store_arrays(store_dir).keys() == after.keys()
    )


def test_two_threshold_labels_ignore_pixels_and_name_no_single_cam_threshold(project: Path, tmp_path: Path) -> None:
    copy_cam_stage(project, tmp_path)
    run_train(tmp_path, *LABELS, "labels.confident={fg: 0.30, bg: 0.05}")
    summary = read_summary(tmp_path / "runs/tiny/labels")
    assert summary["labels"]["ignored_fraction"] > 0 and summary["cam_miou_at_threshold"] is None


def test_store_of_other_settings_is_refused_unless_overwritten(project: Path) -> None:
    result = run_train(project, *LABELS, "crf.gt_prob=0.9", check=False)
    assert result.returncode == 2 and "made with other settings (differs in settings)" in result.stderr
    assert "labels.overwrite=true" in result.stderr
    assert LabelStore(project / "runs/tiny/labels/store").manifest()["producer"]["settings"]["gt_prob"] == 0.7


def test_unknown_crf_backend_is_one_line(project: Path) -> None:
    result = run_train(project, *LABELS, "crf.backend=densecrf", check=False)
    assert result.returncode == 2 and "crf.backend='densecrf' is unknown; use one of pydensecrf, torch" in result.stderr


def test_killed_run_resumes_to_the_same_complete_store(project: Path, tmp_path: Path) -> None:
    copy_cam_stage(project, tmp_path)
    store_dir = tmp_path / "runs/tiny/labels/store"
    # Slow the CRF down (many iterations) so the kill lands mid-run.
    args = [*LABELS, "crf.iterations=400"]
    kill_when(tmp_path, lambda: len(list(store_dir.glob("*.png"))) >= 3, *args)
    partial = len(list(store_dir.glob("*.png")))
    assert 3 <= partial < 24, partial
    assert not LabelStore(store_dir).manifest()["complete"]
    run_train(tmp_path, *args)
    summary = read_summary(tmp_path / "runs/tiny/labels")
    assert summary["in_store"] == 24 and summary["labelled_now"] == 24 - partial
    assert not list(store_dir.glob(".*.tmp"))
    reference = tmp_path / "reference"
    shutil.copytree(tmp_path / "runs/tiny/cam", reference / "runs/tiny/cam")
    shutil.copytree(tmp_path / "data", reference / "data")
    run_train(reference, *args)
    clean = store_arrays(reference / "runs/tiny/labels/store")
    resumed = store_arrays(store_dir)
    assert clean.keys() == resumed.keys() and all(np.array_equal(clean[k], resumed[k]) for k in clean)


def test_unreadable_image_is_skipped_or_stops_the_run(project: Path, tmp_path: Path) -> None:
    copy_cam_stage(project, tmp_path)
    (tmp_path / "data/synthetic/JPEGImages/synthetic_00004.jpg").write_bytes(b"broken")
    result = run_train(tmp_path, *LABELS, check=False)
    assert result.returncode == 2 and "synthetic_00004.jpg is corrupt" in result.stderr
    run_train(tmp_path, *LABELS, "labels.on_error=skip")
    summary = read_summary(tmp_path / "runs/tiny/labels")
    assert list(summary["skipped"]) == ["synthetic_00004"] and summary["in_store"] == 23
    # ... and the segmenter trains on the 23 labelled images, saying which one it went without.
    run_train(tmp_path, *LABELS, "stage=seg", "seg.max_epochs=1")
    assert read_summary(tmp_path / "runs/tiny/seg")["trained_without"] == ["synthetic_00004"]


def test_wrong_checkpoint_is_refused(project: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_bytes(b"\x80\x04}q\x00.")  # a pickled empty dict: a file, but no classifier
    shutil.copytree(project / "data", tmp_path / "data")
    result = run_train(tmp_path, *LABELS, f"ckpt_path={bogus}", "labels.threshold=0.2", check=False)
    assert result.returncode == 2 and "is not a classifier or segmenter checkpoint" in result.stderr
    result = run_train(tmp_path, *LABELS, "name=nothing", check=False)
    assert result.returncode == 2 and "run `python train.py stage=cam name=nothing` first" in result.stderr


def test_ddp_two_processes_give_the_same_store(project: Path) -> None:
    """By default each rank's CRF pool takes its share of the node's cores."""
    run_train(project, *LABELS, "trainer=ddp_cpu", "crf.workers=null", "labels.store_dir=${paths.output_dir}/store_ddp")
    run_dir = project / "runs/tiny/labels"
    assert read_summary(run_dir)["crf_workers"] == max(1, len(os.sched_getaffinity(0)) // 2)
    single, ddp = store_arrays(run_dir / "store"), store_arrays(run_dir / "store_ddp")
    assert single.keys() == ddp.keys() and all(np.array_equal(single[k], ddp[k]) for k in single)
    assert any((labels > 0).any() for labels in single.values())  # not a trivial all-background store
    assert read_summary(run_dir)["labels"]["miou"] > 0


def test_torch_crf_backend_gives_the_pydensecrf_store(project: Path) -> None:
    """crf.backend=torch (here in a CRF worker process, one torch thread) through the whole labels stage."""
    run_train(project, *LABELS, "crf.backend=torch", "hydra.run.dir=runs/tiny/labels_torch")
    reference, ours = read_summary(project / "runs/tiny/labels"), read_summary(project / "runs/tiny/labels_torch")
    assert (reference["settings"]["backend"], ours["settings"]["backend"]) == ("pydensecrf", "torch")
    assert ours["crf_workers"] == 1 and ours["crf_device"] == "cpu" and ours["in_store"] == 24
    stores = [store_arrays(project / f"runs/tiny/{run}/store") for run in ("labels", "labels_torch")]
    assert pixel_agreement(*stores) >= 0.995
    assert abs(ours["labels"]["miou"] - reference["labels"]["miou"]) <= 0.002
