"""One split of a WSSS dataset, whatever its layout: names, image-level labels, images and optional GT masks.

A layout (``isim.data.voc``: PASCAL VOC's; ``isim.data.folder``: images + CSVs) says where a name's image and
labels are; everything else (samples, subsets, masks) is shared here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from isim.errors import IsimError


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    labels: np.ndarray  # (num_classes - 1,) float32 multi-hot over foreground classes
    mask: np.ndarray | None  # H x W uint8 class indices, 255 = ignore; None without GT


class LabelledImages:
    """A split: ``names`` with their multi-hot ``labels`` over ``classes[1:]`` (``classes[0]`` is background), and
    GT masks ``<mask_dir>/<name>.png`` where present. Layouts set these and say where an image is."""

    root: Path
    split: str
    classes: tuple[str, ...]
    names: list[str]
    labels: list[np.ndarray]
    mask_dir: Path | None

    def image_path(self, name: str) -> Path:
        raise NotImplementedError

    def check_images(self) -> None:
        """Every listed image exists: checked up front, since a clear error beats one from a DataLoader worker
        (only decoding problems surface later)."""
        for name in self.names:
            path = self.image_path(name)
            if not path.is_file():
                raise IsimError(f"image {path} is missing; the split list {self.split} names it")

    def subset(self, names: list[str]) -> LabelledImages:
        """The same split restricted to ``names`` (in split order)."""
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
        return np.array(open_image(self.image_path(name)).convert("RGB"))

    def read_mask(self, name: str) -> np.ndarray | None:
        if self.mask_dir is None:
            return None
        path = self.mask_dir / f"{name}.png"
        return np.array(open_image(path)) if path.exists() else None

    def multi_hot(self, names: set[str], source: str) -> np.ndarray:
        """Labels of one image naming ``names``; an unknown class is one line naming ``source`` (file, row)."""
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = names - set(index) or names & {self.classes[0]}
        if unknown:
            raise IsimError(f"{source} names unknown class(es) {sorted(unknown)}; known: {list(self.classes[1:])}")
        labels = np.zeros(len(self.classes) - 1, np.float32)
        labels[[index[name] - 1 for name in names]] = 1
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
