"""Reading any dataset in the PASCAL VOC 2012 layout (the real VOC, SBD's augmented masks, ours).

Image-level labels come from ``Annotations/<name>.xml`` object names, so no external label
file is needed; GT masks (palette or grey PNGs of class indices) are read when present.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from isim.data.classes import VOC_CLASSES
from isim.data.dataset import LabelledImages
from isim.errors import IsimError

GET_VOC = (
    "download VOC 2012 (VOCtrainval_11-May-2012.tar) and point data.root at VOCdevkit/VOC2012, "
    "or run with data=synthetic to use the generated default set"
)


SBD_HINT = (
    " (SBD's 10,582-name train_aug.txt ships with IRN and ISIM, github.com/jiwoon-ahn/irn voc12/train_aug.txt; "
    "without SBD: data.train_split=train data.mask_dir=SegmentationClass)"
)


def image_file(root: Path, name: str) -> Path:
    return root / "JPEGImages" / f"{name}.jpg"


def read_split(root: Path, split: str) -> list[str]:
    """Image names of ``split``: a name under ImageSets/Segmentation, or a path to a .txt list.

    A line's first field is the name; DeepLab-style lines (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``) work too.
    """
    path = Path(split) if split.endswith(".txt") else root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        hint = SBD_HINT if "train_aug" in split else ""
        raise IsimError(
            f"split list {path} not found; set data.train_split/val_split to a split name or a .txt file{hint}"
        )
    names = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise IsimError(f"split list {path} is empty; it needs one image name per line")
    return names


class VOCDataset(LabelledImages):
    """A split of a VOC-layout directory: ``JPEGImages/<name>.jpg``, labels from ``Annotations/<name>.xml``."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        mask_dir: str | None = "SegmentationClass",
        classes: tuple[str, ...] = VOC_CLASSES,
        check_images: bool = True,
    ) -> None:
        self.root = Path(root)
        if not (self.root / "JPEGImages").is_dir():
            raise IsimError(f"data.root={self.root} has no JPEGImages/ directory; {GET_VOC}")
        self.split, self.classes = split, tuple(classes)
        self.names = read_split(self.root, split)
        self.mask_dir = self.root / mask_dir if mask_dir else None
        self.labels = [self.read_labels(name) for name in self.names]
        if check_images:
            self.check_images()

    def image_path(self, name: str) -> Path:
        return image_file(self.root, name)

    def read_labels(self, name: str) -> np.ndarray:
        path = self.root / "Annotations" / f"{name}.xml"
        try:
            objects = ET.parse(path).getroot().iter("object")
            names = {obj.findtext("name", "").strip() for obj in objects}
        except (OSError, ET.ParseError) as error:
            raise IsimError(f"annotation {path} cannot be read ({error}); every image needs a VOC XML") from None
        return self.multi_hot(names, f"annotation {path}")
