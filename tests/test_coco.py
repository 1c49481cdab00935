"""``data=coco14``: a COCO 2014-format set the test writes itself (polygons, RLE, a crowd, gapped category ids,
an image without instances), its rendered masks, and the stages on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from isim.data import VOCDataset, WSSSDataModule
from isim.errors import IsimError
from tests.conftest import ROOT, TINY_RUN, read_summary, run_train

CATEGORY_IDS = [*range(1, 12), *range(13, 22)]  # COCO's first 20 ids: 12 is unused, isim's index is 1 + position


def write_coco(voc: Path, root: Path) -> dict[str, np.ndarray]:
    """The VOC-layout set ``voc`` in COCO 2014's layout: even classes as polygons, odd ones as compressed RLE, the
    first object of the first image as a crowd (uncompressed RLE), an extra image without instances per split.
    Returns the expected class-index mask per image name (255 where the source ignores, e.g. boundaries)."""
    used = sorted({int(c) for s in ("train", "val") for n in VOCDataset(voc, s).names for c in np.unique(mask(voc, n))})
    used = [c for c in used if c not in (0, 255)]
    assert len(used) <= len(CATEGORY_IDS)
    category = dict(zip(used, CATEGORY_IDS, strict=False))
    index = {voc_class: i for i, voc_class in enumerate(used, 1)}
    expected = {}
    for split in ("train", "val"):
        (root / f"{split}2014").mkdir(parents=True)
        images, annotations = [], []
        data = VOCDataset(voc, split)
        names = [*data.names, "empty"]
        for number, name in enumerate(names, 1):
            file_name = f"COCO_{split}2014_{number:012d}.jpg"
            source = data.image_path(name if name != "empty" else data.names[0])
            shutil.copy(source, root / f"{split}2014" / file_name)
            height, width = np.array(Image.open(source)).shape[:2]
            images.append({"id": number, "file_name": file_name, "height": height, "width": width})
            if name == "empty":
                continue
            label = mask(voc, name)
            target = np.full(label.shape, 255, np.uint8)
            for voc_class in np.unique(label):
                if voc_class in (0, 255):
                    continue
                region = (label == voc_class).astype(np.uint8)
                crowd = split == "train" and number == 1 and not annotations
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": number,
                        "category_id": category[int(voc_class)],
                        "segmentation": segmentation(region, voc_class, crowd),
                        "area": int(region.sum()),
                        "iscrowd": int(crowd),
                    }
                )
                target[region > 0] = index[int(voc_class)]
            target[label == 0] = 0
            expected[Path(file_name).stem] = target
        categories = [{"id": i, "name": f"thing{i}", "supercategory": "x"} for i in CATEGORY_IDS]
        instances = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(instances))
    return expected


def mask(voc: Path, name: str) -> np.ndarray:
    return np.array(Image.open(voc / "SegmentationClass" / f"{name}.png"))


def segmentation(region: np.ndarray, voc_class: int, crowd: bool) -> list | dict:
    if crowd:  # uncompressed RLE, column-major run lengths starting with zeros, as COCO's crowds are stored
        flat = region.flatten(order="F")
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        counts = np.diff(np.concatenate([[0], changes])).tolist()
        return {"size": list(region.shape), "counts": counts}
    if voc_class % 2:
        rle = coco_mask.encode(np.asfortranarray(region))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.flatten().astype(float).tolist() for c in contours if len(c) >= 3]


@pytest.fixture(scope="module")
def coco(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("coco") / "coco"
    return root, write_coco(tiny_voc, root)


def test_masks_are_rendered_once_from_polygons_and_rle(coco: tuple[Path, dict], tmp_path: Path) -> None:
    root, expected = coco
    data = WSSSDataModule(str(root), layout="coco", mask_dir=str(tmp_path / "masks"), num_workers=0)
    assert data.classes == ("background", *(f"thing{i}" for i in CATEGORY_IDS))
    data.prepare_data()
    train = data.split("train")
    assert train.left_out == 1 and len(train) == 24 and "COCO_train2014_000000000025" not in train.names
    assert len(data.split("val")) == 8 and data.split("val").left_out == 1
    agree = total = 0
    for name, target in expected.items():
        rendered = np.array(Image.open(tmp_path / "masks" / f"{name}.png"))
        known = target != 255
        agree, total = agree + int((rendered[known] == target[known]).sum()), total + int(known.sum())
    assert agree / total > 0.99  # polygons from pixel contours lose a little at the edges; RLE is exact
    first = train.names[0]
    labels = np.flatnonzero(train.labels[0]) + 1
    assert set(labels) == set(np.unique(expected[first])) - {0, 255}  # the crowd's class is a label too
    stamp = (tmp_path / "masks" / f"{first}.png").stat().st_mtime_ns
    data.prepare_data()
    assert (tmp_path / "masks" / f"{first}.png").stat().st_mtime_ns == stamp  # never recomputed


def test_cam_labels_a_round_and_infer_on_coco(coco: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = coco
    overrides = [*TINY_RUN, "data=coco14", f"data.root={root}", "name=c", "data.eval_batch_size=8", "crf.workers=1"]
    run_train(tmp_path, *overrides, "stage=iterate", "iterate.rounds=1", "iterate.epochs_per_round=1")
    runs = tmp_path / "runs/c"
    cam, labels = read_summary(runs / "cam"), read_summary(runs / "labels")
    assert cam["data"]["train_images_left_out"] == 1 and len(cam["cam"]["best_per_class_iou"]) == 21
    assert set(labels["labels"]["per_class"]) == {"background", *(f"thing{i}" for i in CATEGORY_IDS)}
    masks = tmp_path / "data/coco14_masks"
    assert labels["in_store"] == 24 and labels["labels"]["miou"] == pytest.approx(miou(runs / "labels/store", masks))
    round_1 = read_summary(runs / "round-1")
    assert round_1["labels"]["miou"] == pytest.approx(miou(runs / "round-1/store", masks))
    checkpoint = runs / "round-1/checkpoints/last.ckpt"
    infer = [
        str(ROOT / "infer.py"),
        "data=coco14",
        f"data.root={root}",
        "name=c",
        "split=val",
        f"ckpt_path={checkpoint}",
    ]
    result = subprocess.run(
        [sys.executable, *infer, "data.num_workers=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(runs / "infer")
    assert summary["images"] == 8 and summary["eval"]["miou"] == pytest.approx(miou(runs / "infer/masks", masks))


def miou(predictions: Path, gt: Path) -> float:
    """Mean IoU over the classes present in GT or prediction, computed here from the PNGs alone."""
    confusion = np.zeros((256, 256), np.int64)
    for path in sorted(predictions.glob("*.png")):
        pred, target = np.array(Image.open(path)).ravel(), np.array(Image.open(gt / path.name)).ravel()
        keep = (target != 255) & (pred != 255)
        np.add.at(confusion, (target[keep], pred[keep]), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    return float((np.diag(confusion)[present] / union[present]).mean())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "annotations/instances_val2014.json").unlink(), "instances_val2014.json not found"),
        (lambda root: (root / "annotations/instances_val2014.json").write_text("{}"), "it has no 'images' key"),
        (lambda root: drop_key(root, "segmentation"), "an annotation has no 'segmentation' key"),
        (lambda root: (root / "val2014/COCO_val2014_000000000003.jpg").unlink(), "000000000003.jpg is missing"),
    ],
)
def test_bad_coco_is_one_line(damage, message: str, coco: tuple[Path, dict], tmp_path: Path) -> None:
    root = Path(shutil.copytree(coco[0], tmp_path / "coco"))
    damage(root)
    with pytest.raises(IsimError, match=message):
        data = WSSSDataModule(str(root), layout="coco", mask_dir=str(tmp_path / "masks"), num_workers=0)
        data.prepare_data()


def drop_key(root: Path, key: str) -> None:
    path = root / "annotations/instances_val2014.json"
    instances = json.loads(path.read_text())
    del instances["annotations"][0][key]
    path.write_text(json.dumps(instances))
