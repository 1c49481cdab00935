"""``data=folder``: your own images, CSV labels and class names, no masks, through every stage and infer.py."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isim.data import VOCDataset
from isim.data.folder import FolderDataset, folder_classes
from isim.errors import IsimError
from tests.conftest import ROOT, TINY_RUN, read_summary, run_train
from tests.test_errors import assert_one_line_error


def write_folder(voc: Path, root: Path, masks: bool = False) -> Path:
    """The VOC-layout set ``voc`` as a folder dataset: PNG images, CSVs naming only the classes it uses."""
    (root / "images").mkdir(parents=True)
    for split in ("train", "val"):
        data = VOCDataset(voc, split)
        with open(root / f"{split}.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["image", "labels"])
            for name, labels in zip(data.names, data.labels, strict=True):
                shutil.copy(data.image_path(name), root / "images" / f"{name}.jpg")
                writer.writerow([f"{name}.jpg", ";".join(data.classes[i + 1] for i in np.flatnonzero(labels))])
        if masks:
            shutil.copytree(voc / "SegmentationClass", root / "masks", dirs_exist_ok=True)
    return root


@pytest.fixture(scope="module")
def folder(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tiny_voc, tmp_path_factory.mktemp("folder") / "mine")


FOLDER = [*TINY_RUN, "data=folder", "name=mine", "data.eval_batch_size=8", "crf.workers=1", "labels.overlays=0"]


def test_class_list_comes_from_the_data(folder: Path, tiny_voc: Path) -> None:
    splits = [VOCDataset(tiny_voc, split) for split in ("train", "val")]
    used = {data.classes[i + 1] for data in splits for labels in data.labels for i in np.flatnonzero(labels)}
    classes = folder_classes(folder, ["train", "val"])
    assert classes == ("background", *sorted(used)) and 1 < len(used) < 20  # only what the CSVs name
    (folder / "classes.txt").write_text("\n".join([*classes[1:], "zebra"]) + "\n")
    try:
        assert folder_classes(folder, ["train", "val"]) == (*classes, "zebra")  # the file's list, in its order
    finally:
        (folder / "classes.txt").unlink()
    data = FolderDataset(folder, "train", classes)
    assert data.image_path(data.names[0]) == folder / "images" / f"{data.names[0]}.jpg"
    assert data[0].mask is None and data.labels[0].shape == (len(classes) - 1,)


def test_whole_pipeline_without_masks_then_infer(folder: Path, tmp_path: Path) -> None:
    root = f"data.root={folder}"
    run_train(tmp_path, *FOLDER, root, "stage=iterate", "iterate.rounds=1", "iterate.epochs_per_round=1")
    runs = tmp_path / "runs/mine"
    classes = folder_classes(folder, ["train", "val"])
    cam, labels, round_1 = (read_summary(runs / step) for step in ("cam", "labels", "round-1"))
    assert cam["cam"]["best_miou"] is None and labels["labels"]["scored"] is False
    assert round_1["val"]["miou"] is None and round_1["labels"]["scored"] is False
    assert 0 <= round_1["labels"]["changed_fraction"] < 1 and len(round_1["logit_offsets"]) == len(classes)
    assert len(list((runs / "round-1/store").glob("*.png"))) == 24
    label = np.array(Image.open(next((runs / "round-1/store").glob("*.png"))))
    assert label.max() < len(classes)  # indices into the data's own class list
    checkpoint = f"ckpt_path={runs / 'round-1/checkpoints/last.ckpt'}"
    result = run_infer(tmp_path, root, checkpoint)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((runs / "infer/masks").glob("*.png"))) == 8 and "eval" not in read_summary(runs / "infer")
    # A checkpoint of another class list is refused, by the stages and by infer.py.
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / "classes.txt").write_text("\n".join([*classes[1:], "zebra"]) + "\n")
    refused = run_infer(tmp_path, f"data.root={other}", checkpoint)
    assert_one_line_error(refused, "was trained on")
    relabel = run_train(tmp_path, *FOLDER, f"data.root={other}", "stage=labels", "labels.overwrite=true", check=False)
    assert_one_line_error(relabel, "was trained on")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "train.csv").write_text("file,classes\n"), "train.csv line 1: the header must be"),
        (lambda root: append(root / "train.csv", "x.jpg,cat,dog\n"), r"train.csv line 26: expected an image"),
        (lambda root: append(root / "train.csv", "x.jpg,unicorn\n"), r"train.csv line 26 names unknown class"),
        (lambda root: append(root / "train.csv", "x.jpg,\n"), r"images/x.jpg is missing"),
        (lambda root: (root / "classes.txt").write_text("background\ncat\n"), "background is implied"),
    ],
)
def test_bad_folder_data_is_one_line(damage, message: str, folder: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(folder, tmp_path / "mine"))
    damage(root)
    if "unknown class" in message:
        (root / "classes.txt").write_text("\n".join(folder_classes(folder, ["train", "val"])[1:]) + "\n")
    with pytest.raises(IsimError, match=message):
        FolderDataset(root, "train", folder_classes(root, ["train", "val"]))
    assert_one_line_error(run_train(tmp_path, *FOLDER, f"data.root={root}", check=False))


def run_infer(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "infer.py"), "data=folder", "name=mine", "split=val", "data.num_workers=0"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*command, *overrides], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def append(path: Path, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)
