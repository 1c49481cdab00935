"""The synthetic generator, the VOC-layout loader and the DataModule."""

from __future__ import annotations

import hashlib
import multiprocessing
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from isim.data import IGNORE_INDEX, VOC_CLASSES, SyntheticSpec, VOCDataset, WSSSDataModule, ensure_synthetic_voc
from isim.data.synthetic import render_image
from isim.errors import IsimError
from tests.conftest import TINY_SPEC


def digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


def test_generation_is_deterministic_and_seed_dependent(tiny_voc: Path, tmp_path: Path) -> None:
    again = ensure_synthetic_voc(tmp_path / "again", TINY_SPEC)
    assert digest(again) == digest(tiny_voc)
    other = ensure_synthetic_voc(tmp_path / "other", SyntheticSpec(**{**TINY_SPEC.__dict__, "seed": 4}))
    assert digest(other) != digest(tiny_voc)


def test_concurrent_generation_of_one_set_keeps_one_copy(tiny_voc: Path, tmp_path: Path) -> None:
    # Parallel sweep jobs start on a fresh machine together: each builds the set, the first rename wins.
    context = multiprocessing.get_context("spawn")
    root = tmp_path / "shared"
    with context.Pool(2) as pool:
        roots = pool.starmap(ensure_synthetic_voc, [(root, TINY_SPEC)] * 2)
    assert roots == [root, root]
    assert digest(root) == digest(tiny_voc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no temporary copy left behind


def test_generated_set_has_the_voc_layout(tiny_voc: Path) -> None:
    train = (tiny_voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (tiny_voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == TINY_SPEC.num_train and len(val) == TINY_SPEC.num_val and not set(train) & set(val)
    mask = Image.open(tiny_voc / "SegmentationClass" / f"{train[0]}.png")
    assert mask.mode == "P" and mask.getpalette()[3:6] == [128, 0, 0]  # VOC palette: class 1 is dark red
    names = {o.findtext("name") for o in ET.parse(tiny_voc / "Annotations" / f"{train[0]}.xml").iter("object")}
    assert names and names <= set(VOC_CLASSES[1:])


def test_masks_have_ignored_boundaries_and_objects_have_small_parts() -> None:
    image, mask, objects = render_image(SyntheticSpec(), 7)
    assert image.shape == (128, 128, 3) and mask.shape == (128, 128)
    assert (mask == IGNORE_INDEX).any() and (mask == 0).mean() > 0.5
    assert {c for c, _ in objects} == set(np.unique(mask)) - {0, IGNORE_INDEX}
    # The class-specific part is saturated; the shared body is not, and is much larger.
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).astype(float)
    obj = (mask > 0) & (mask != IGNORE_INDEX)
    part = obj & (hsv[..., 1] > 150) & (hsv[..., 2] > 100)
    assert 0.05 < part.sum() / obj.sum() < 0.45


def test_loader_reads_labels_masks_and_names(tiny_voc: Path) -> None:
    data = VOCDataset(tiny_voc, "train")
    sample = data[0]
    assert sample.name.startswith("synthetic_") and sample.image.dtype == np.uint8
    present = set(np.unique(sample.mask)) - {0, IGNORE_INDEX}
    assert {int(i) + 1 for i in np.flatnonzero(sample.labels)} == present  # XML labels agree with the mask
    assert sample.mask.shape == sample.image.shape[:2]


def test_split_can_be_a_list_file_of_arbitrary_names(tiny_voc_copy: Path) -> None:
    (tiny_voc_copy / "JPEGImages/synthetic_00000.jpg").rename(tiny_voc_copy / "JPEGImages/cat-photo_A.jpg")
    (tiny_voc_copy / "Annotations/synthetic_00000.xml").rename(tiny_voc_copy / "Annotations/cat-photo_A.xml")
    split = tiny_voc_copy / "mine.txt"
    split.write_text("cat-photo_A\n/JPEGImages/synthetic_00001.jpg /SegmentationClassAug/synthetic_00001.png\n")
    data = VOCDataset(tiny_voc_copy, str(split))
    assert data.names == ["cat-photo_A", "synthetic_00001"]
    assert data[0].mask is None and data[1].mask is not None  # no GT mask for the renamed image


def test_datamodule_batches_and_augmentation_is_seeded(tiny_voc: Path) -> None:
    def first_batch() -> dict:
        torch.manual_seed(0)
        dm = WSSSDataModule(
            str(tiny_voc), train_split="train", batch_size=4, num_workers=0, crop_size=48, resize_long=(48, 80)
        )
        return next(iter(dm.train_dataloader()))

    batch = first_batch()
    assert batch["image"].shape == (4, 3, 48, 48) and batch["labels"].shape == (4, 20)
    assert batch["mask"].dtype == torch.long and batch["mask"].shape == (4, 48, 48)
    assert torch.equal(first_batch()["image"], batch["image"])


def test_eval_loader_refuses_mixed_sizes_clearly(tiny_voc_copy: Path) -> None:
    path = tiny_voc_copy / "JPEGImages/synthetic_00000.jpg"
    Image.open(path).resize((40, 50)).save(path)
    (tiny_voc_copy / "SegmentationClass/synthetic_00000.png").unlink()
    loader = WSSSDataModule(str(tiny_voc_copy), eval_batch_size=4, num_workers=0).eval_dataloader("train")
    with pytest.raises(IsimError, match="eval_batch_size=1"):
        next(iter(loader))


def test_ddp_validation_shards_are_not_padded_with_repeats(tiny_voc: Path, tmp_path: Path) -> None:
    """Lightning's default DistributedSampler would pad 7 images to 8, counting one twice in the mIoU."""
    names = VOCDataset(tiny_voc, "val").names[:7]
    (tmp_path / "seven.txt").write_text("\n".join(names) + "\n")
    datamodule = WSSSDataModule(str(tiny_voc), val_split=str(tmp_path / "seven.txt"), eval_batch_size=2, num_workers=0)
    shards = []
    for rank in (0, 1):
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        shards.append([name for batch in datamodule.val_dataloader() for name in batch["name"]])
    assert [len(shard) for shard in shards] == [4, 3] and sorted(shards[0] + shards[1]) == sorted(names)
