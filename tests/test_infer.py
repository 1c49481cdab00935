"""``python infer.py``: a folder or a VOC split in, VOC-palette masks out, mIoU when GT exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isim.crf import BACKENDS
from tests.conftest import ROOT, TINY, copy_data_with_subset, read_summary, run_train

DATA = [o for o in TINY if o.startswith("data.synthetic.")]


def run_infer(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), "name=tiny", *DATA, "data.num_workers=0", *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def segmenter(labelled_project: Path) -> Path:
    run_train(
        labelled_project,
        *TINY,
        "name=tiny",
        "stage=seg",
        "seg.max_epochs=1",
        "data.labels=gt",
        "hydra.run.dir=runs/tiny/seg_for_infer",
    )
    return labelled_project / "runs/tiny/seg_for_infer/checkpoints/last.ckpt"


def test_infer_on_a_folder_writes_a_palette_mask_per_image(segmenter: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(64, 64), (75, 50)]):  # mixed sizes, not multiples of the stride
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), np.uint8)).save(folder / f"p{i}.jpg")
    (folder / "notes.txt").write_text("not an image")
    result = run_infer(tmp_path, f"ckpt_path={segmenter}", f"input={folder}", "overlays=true", "postprocess_crf=true")
    assert result.returncode == 0, result.stderr[-2000:]
    masks = sorted((tmp_path / "runs/tiny/infer/masks").glob("*.png"))
    assert [m.stem for m in masks] == ["p0", "p1"]
    mask = Image.open(masks[1])
    assert mask.mode == "P" and mask.size == (50, 75) and np.array(mask).max() < 21
    summary = read_summary(tmp_path / "runs/tiny/infer")
    assert summary["images"] == 2 and "eval" not in summary and summary["crf"] is True
    assert len(list((tmp_path / "runs/tiny/infer/overlays").glob("*.png"))) == 2


def test_infer_on_a_voc_split_reports_miou(segmenter: Path, labelled_project: Path, tmp_path: Path) -> None:
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    result = run_infer(tmp_path, f"ckpt_path={segmenter}", "split=val", "batch_size=4", "scales=[1.0]")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path / "runs/tiny/infer")
    assert summary["images"] == 8 and 0 <= summary["eval"]["miou"] <= 1
    assert len(list((tmp_path / "runs/tiny/infer/masks").glob("*.png"))) == 8


def test_infer_on_a_split_without_annotations_writes_the_voc_server_layout(
    segmenter: Path, labelled_project: Path, tmp_path: Path
) -> None:
    """VOC's test split has images and a list, no XMLs and no masks: format=voc_server writes class-index palette
    PNGs where the evaluation server wants them, and the archive to upload."""
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    root = next((tmp_path / "data").glob("*/JPEGImages")).parent
    shutil.rmtree(root / "Annotations")
    shutil.rmtree(root / "SegmentationClass")
    result = run_infer(tmp_path, f"ckpt_path={segmenter}", "split=val", "format=voc_server", "scales=[1.0]")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs/tiny/infer"
    results = run_dir / "results/VOC2012/Segmentation/comp6_test_cls"
    names = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(path.stem for path in results.glob("*.png")) == sorted(names)
    mask = Image.open(results / f"{names[0]}.png")
    assert mask.mode == "P" and mask.size == Image.open(root / f"JPEGImages/{names[0]}.jpg").size
    assert np.array(mask).max() < 21
    summary = read_summary(run_dir)
    assert "eval" not in summary and summary["images"] == 8 and summary["archive"] == str(run_dir / "results.tar.gz")
    with tarfile.open(run_dir / "results.tar.gz") as archive:
        members = sorted(archive.getnames())
    assert [m for m in members if m.endswith(".png")] == sorted(
        f"results/VOC2012/Segmentation/comp6_test_cls/{name}.png" for name in names
    )
    result = run_infer(tmp_path, f"ckpt_path={segmenter}", "split=val", "format=server")
    assert result.returncode == 2 and "format='server' is unknown; use one of masks, voc_server" in result.stderr


def test_infer_crf_post_processing_backends_agree(segmenter: Path, labelled_project: Path, tmp_path: Path) -> None:
    """postprocess_crf with crf.backend=torch (a batch of 4 images per CRF call) gives pydensecrf's masks."""
    shutil.copytree(labelled_project / "data", tmp_path / "data")
    runs = {}
    for backend in BACKENDS:
        run_dir = tmp_path / f"runs/tiny/infer_{backend}"
        result = run_infer(
            tmp_path,
            f"ckpt_path={segmenter}",
            "split=val",
            "batch_size=4",
            "scales=[1.0]",
            "postprocess_crf=true",
            f"crf.backend={backend}",
            "crf.bilateral.sxy=8",
            f"hydra.run.dir={run_dir}",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        masks = {path.name: np.array(Image.open(path)) for path in (run_dir / "masks").glob("*.png")}
        runs[backend] = masks, read_summary(run_dir)["eval"]["miou"]
    (reference, reference_miou), (ours, miou) = runs["pydensecrf"], runs["torch"]
    assert len(ours) == 8 and ours.keys() == reference.keys()
    same = sum(int((ours[k] == reference[k]).sum()) for k in ours) / sum(m.size for m in ours.values())
    assert same >= 0.995 and abs(miou - reference_miou) <= 0.002


def test_infer_under_ddp_equals_one_process(segmenter: Path, labelled_project: Path, tmp_path: Path) -> None:
    """7 val images over 2 gloo ranks (4 + 3, none repeated): the same masks and mIoU as 1 process, one summary,
    one log."""
    seven = copy_data_with_subset(labelled_project, tmp_path, "val", 7)
    runs = {}
    for trainer in ("cpu", "ddp_cpu"):
        run_dir = tmp_path / f"runs/tiny/infer_{trainer}"
        result = run_infer(
            tmp_path, f"ckpt_path={segmenter}", f"split={seven}", f"trainer={trainer}", f"hydra.run.dir={run_dir}"
        )
        assert result.returncode == 0, result.stderr[-2000:]
        masks = {path.name: np.array(Image.open(path)) for path in (run_dir / "masks").glob("*.png")}
        runs[trainer] = masks, read_summary(run_dir)
    (single_masks, single), (ddp_masks, ddp) = runs["cpu"], runs["ddp_cpu"]
    assert sorted(ddp_masks) == sorted(f"{name}.png" for name in seven.read_text().split())
    assert all(np.array_equal(ddp_masks[name], single_masks[name]) for name in single_masks)
    assert ddp["processes"] == 2 and ddp["images"] == 7 and ddp["eval"] == single["eval"]
    assert sorted(path.name for path in (tmp_path / "runs/tiny/infer_ddp_cpu").glob("*.log")) == ["infer.log"]


def test_infer_bad_inputs_are_one_line_errors(labelled_project: Path, tmp_path: Path) -> None:
    classifier = labelled_project / "runs/tiny/cam/checkpoints/last.ckpt"
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photos/a.jpg")
    result = run_infer(tmp_path, f"ckpt_path={classifier}", f"input={tmp_path}/photos")
    assert result.returncode == 2 and "is not a segmenter checkpoint" in result.stderr
    result = run_infer(
        tmp_path, f"ckpt_path={classifier}", f"input={tmp_path}/photos", "postprocess_crf=true", "crf.backend=cuda"
    )
    assert result.returncode == 2 and "crf.backend='cuda' is unknown; use one of pydensecrf, torch" in result.stderr
    result = run_infer(tmp_path, f"ckpt_path={tmp_path}/none.ckpt", f"input={tmp_path}/photos")
    assert result.returncode == 2 and "none.ckpt not found" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_infer(tmp_path, f"ckpt_path={classifier}", f"input={tmp_path}/empty")
    assert result.returncode == 2 and "holds no images" in result.stderr
