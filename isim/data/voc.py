"""Reading any dataset in the PASCAL VOC 2012 layout (the real VOC, SBD's augmented masks, ours).

Image-level labels come from ``Annotations/<name>.xml`` object names, so no external label
file is needed; GT masks (palette or grey PNGs of class indices) are read when present.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from isim.data.classes import VOC_CLASSES
from isim.errors import IsimError

GET_VOC = (
    "download VOC 2012 (VOCtrainval_11-May-2012.tar) and point data.root at VOCdevkit/VOC2012, "
    "or run with data=synthetic to use the generated default set"
)


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    labels: np.ndarray  # (num_classes - 1,) float32 multi-hot over foreground classes
    mask: np.ndarray | None  # H x W uint8 class indices, 255 = ignore; None without GT


SBD_HINT = (
    " (SBD's 10,582-name train_aug.txt ships with IRN and ISIM, github.com/jiwoon-ahn/irn voc12/train_aug.txt; "
    "without SBD: data.train_split=train data.mask_dir=SegmentationClass)"
)


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


class VOCDataset:
    """Samples of one split of a VOC-layout directory, as raw uint8 arrays (transforms come later)."""

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
        self.split = split
        self.names = read_split(self.root, split)
        self.mask_dir = self.root / mask_dir if mask_dir else None
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.num_classes = len(classes)
        # Checked up front (cheap, and a clear error beats one from inside a DataLoader worker);
        # only decoding problems of images and masks surface later.
        self.labels = [self.read_labels(name) for name in self.names]
        for name in self.names if check_images else ():
            image = self.root / "JPEGImages" / f"{name}.jpg"
            if not image.is_file():
                raise IsimError(f"image {image} is missing; the split list {split} names it")

    def subset(self, names: list[str]) -> VOCDataset:
        """The same dataset restricted to ``names`` (in split order)."""
        keep = set(names)
        subset = copy.copy(self)
        subset.names = [name for name in self.names if name in keep]
        subset.labels = [labels for name, labels in zip(self.names, self.labels, strict=True) if name in keep]
        return subset

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        image = self.read_image(name)
        mask = self.read_mask(name)
        if mask is not None and mask.shape != image.shape[:2]:
            raise IsimError(
                f"mask {self.mask_dir / (name + '.png')} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}; masks must have their image's size"
            )
        return Sample(name, image, self.labels[index], mask)

    def read_image(self, name: str) -> np.ndarray:
        return np.array(open_image(self.root / "JPEGImages" / f"{name}.jpg").convert("RGB"))

    def read_mask(self, name: str) -> np.ndarray | None:
        if self.mask_dir is None:
            return None
        path = self.mask_dir / f"{name}.png"
        return np.array(open_image(path)) if path.exists() else None

    def read_labels(self, name: str) -> np.ndarray:
        path = self.root / "Annotations" / f"{name}.xml"
        try:
            objects = ET.parse(path).getroot().iter("object")
            names = {obj.findtext("name", "").strip() for obj in objects}
        except (OSError, ET.ParseError) as error:
            raise IsimError(f"annotation {path} cannot be read ({error}); every image needs a VOC XML") from None
        unknown = names - set(self.class_index) or names & {"background"}
        if unknown:
            known = list(self.class_index)[1:]
            raise IsimError(f"annotation {path} names unknown class(es) {sorted(unknown)}; known: {known}")
        labels = np.zeros(self.num_classes - 1, np.float32)
        labels[[self.class_index[n] - 1 for n in names]] = 1
        return labels


def open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise IsimError(f"{path} is missing; the split list names it") from None
    except (UnidentifiedImageError, OSError) as error:
        raise IsimError(f"{path} is corrupt or unreadable ({error})") from None
    return image
