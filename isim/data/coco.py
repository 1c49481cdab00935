"""MS COCO 2014 (``data=coco14``), read with pycocotools from COCO's own files:

    <root>/train2014/*.jpg, <root>/val2014/*.jpg
    <root>/annotations/instances_train2014.json, instances_val2014.json

Classes: the JSON's categories in id order (COCO's 80), background first, so a class's index is 1 + its
position (the usual WSSS indexing). Image-level labels: the categories of an image's instances. GT masks are
rendered from the instances (polygons and RLE alike) on first use into ``mask_dir`` and never recomputed:
instances are painted largest first, so where two overlap the smaller one (usually the one in front) wins;
crowd regions (``iscrowd``) are painted with their class like any instance. Images without any instance are
left out (their number is ``left_out``), as the field's COCO protocol does: 82,081 train and 40,137 val images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask
from tqdm import tqdm

from isim.data.classes import voc_palette
from isim.data.dataset import LabelledImages
from isim.errors import IsimError
from isim.io import write_png

REQUIRED = ("images", "annotations", "categories")
RECORDS = (  # (keys every record needs, where the records are, what to call one)
    (("id", "file_name", "height", "width"), "images", "image"),
    (("image_id", "category_id", "segmentation"), "annotations", "annotation"),
    (("id", "name"), "categories", "category"),
)


class CocoDataset(LabelledImages):
    """A split (``train`` / ``val``: COCO 2014's) of a COCO directory, its GT masks in ``mask_dir`` (rendered
    there on first use when ``render``; image names are unique across COCO's splits, so one folder serves both)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        mask_dir: str | Path | None,
        render: bool = False,
        check_images: bool = True,
    ) -> None:
        self.root, self.split = Path(root), split
        instances = read_instances(self.root, split)
        self.classes = coco_classes(instances)
        index = {category["id"]: i for i, category in enumerate(sorted_categories(instances), 1)}
        by_image: dict[int, list[dict]] = {image["id"]: [] for image in instances["images"]}
        for annotation in instances["annotations"]:
            by_image[annotation["image_id"]].append({**annotation, "class": index[annotation["category_id"]]})
        images = [image for image in instances["images"] if by_image[image["id"]]]
        self.left_out = len(instances["images"]) - len(images)
        self.files = {
            Path(image["file_name"]).stem: self.root / f"{split}2014" / image["file_name"] for image in images
        }
        self.names = list(self.files)
        self.labels = [class_labels(by_image[image["id"]], len(self.classes)) for image in images]
        self.mask_dir = Path(mask_dir) if mask_dir else None
        if render and self.mask_dir is not None:
            self._render_masks([by_image[image["id"]] for image in images], images)
        if check_images:
            self.check_images()

    def image_path(self, name: str) -> Path:
        return self.files[name]

    def _render_masks(self, instances: list[list[dict]], images: list[dict]) -> None:
        """Each image's GT mask not there yet (atomic PNGs: a killed first run resumes where it stopped); the
        lists follow ``names``."""
        paths = [self.mask_dir / f"{name}.png" for name in self.names]
        todo = [job for job in zip(paths, instances, images, strict=True) if not job[0].is_file()]
        palette = voc_palette()
        for path, found, image in tqdm(todo, desc=f"rendering COCO {self.split} masks", unit="img", leave=False):
            write_png(path, render_mask(found, image["height"], image["width"]), palette)


def class_labels(instances: list[dict], num_classes: int) -> np.ndarray:
    labels = np.zeros(num_classes - 1, np.float32)
    labels[[instance["class"] - 1 for instance in instances]] = 1
    return labels


def render_mask(instances: list[dict], height: int, width: int) -> np.ndarray:
    """Class-index mask of one image from its instances (each with its ``class`` index), largest first."""
    mask = np.zeros((height, width), np.uint8)
    for instance in sorted(instances, key=lambda a: a.get("area", 0), reverse=True):
        mask[decode(instance["segmentation"], height, width) > 0] = instance["class"]
    return mask


def decode(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A binary mask from COCO polygons, uncompressed RLE (crowds) or compressed RLE."""
    if isinstance(segmentation, list):  # polygons
        rles = coco_mask.frPyObjects(segmentation, height, width)
        return coco_mask.decode(coco_mask.merge(rles))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        segmentation = coco_mask.frPyObjects(segmentation, height, width)
    return coco_mask.decode(segmentation)


def read_instances(root: Path, split: str) -> dict:
    path = root / "annotations" / f"instances_{split}2014.json"
    if not path.is_file():
        raise IsimError(f"{path} not found; data=coco14 reads COCO 2014's annotations/instances_{{train,val}}2014.json")
    try:
        instances = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise IsimError(f"{path} is not readable JSON ({error})") from None
    missing = [key for key in REQUIRED if key not in instances]
    if missing:
        raise IsimError(f"{path} is not a COCO instances file: it has no {missing[0]!r} key")
    for keys, records, what in RECORDS:
        for record in instances[records]:
            missing = [key for key in keys if key not in record]
            if missing:
                raise IsimError(f"{path} is not a COCO instances file: an {what} has no {missing[0]!r} key")
    return instances


def sorted_categories(instances: dict) -> list[dict]:
    return sorted(instances["categories"], key=lambda category: category["id"])


def coco_classes(instances: dict) -> tuple[str, ...]:
    return ("background", *(category["name"] for category in sorted_categories(instances)))
