"""Your own data (``data=folder``): a folder of images and a CSV of image-level labels per split.

    <root>/images/<file>.jpg|.png      the images
    <root>/train.csv, <root>/val.csv   columns ``image,labels``: the file name under images/ and its classes,
                                       ``;``-separated (empty: an image with none of the classes)
    <root>/classes.txt                 optional: one class name a line (background is implied, index 0);
                                       without it, the sorted union of the names in the CSVs
    <root>/masks/<image stem>.png      optional GT masks (class indices, 255 = ignore), for evaluation only

An image's name (label stores, masks, predictions) is its file stem.
"""

from __future__ import annotations

import csv
from pathlib import Path

from isim.data.dataset import LabelledImages
from isim.errors import IsimError

HEADER = ["image", "labels"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class FolderDataset(LabelledImages):
    """A split of a folder dataset: ``<root>/<split>.csv`` (or a .csv path) over ``<root>/images``."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: tuple[str, ...],
        mask_dir: str | None = "masks",
        check_images: bool = True,
    ) -> None:
        self.root, self.split, self.classes = Path(root), split, tuple(classes)
        path = split_csv(self.root, split)
        rows = read_rows(path)
        self.files = image_files(self.root, rows)
        if len(self.files) < len(rows):
            raise IsimError(f"{path} lists two images with the same file stem; names must be unique")
        self.names = list(self.files)
        self.labels = [self.multi_hot(names, f"{path} line {line}") for line, (_, names) in enumerate(rows, 2)]
        self.mask_dir = self.root / mask_dir if mask_dir else None
        if check_images:
            self.check_images()

    def image_path(self, name: str) -> Path:
        return self.files[name]


def image_files(root: Path, rows: list[tuple[str, set[str]]]) -> dict[str, Path]:
    """Name (file stem) -> image file of a split's CSV rows."""
    return {Path(image).stem: root / "images" / image for image, _ in rows}


def split_csv(root: Path, split: str) -> Path:
    path = Path(split) if split.endswith(".csv") else root / f"{split}.csv"
    if not path.is_file():
        raise IsimError(f"{path} not found; data=folder needs <root>/<split>.csv with columns image,labels")
    return path


def read_rows(path: Path) -> list[tuple[str, set[str]]]:
    """(image file, class names) per row of a split CSV; a malformed row is one line with its line number."""
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or [cell.strip() for cell in header] != HEADER:
            raise IsimError(f"{path} line 1: the header must be {','.join(HEADER)} (got {header})")
        rows = []
        for line, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != 2 or not row[0].strip():
                raise IsimError(f"{path} line {line}: expected an image file and its labels (got {row})")
            image = row[0].strip()
            if Path(image).suffix.lower() not in IMAGE_SUFFIXES:
                raise IsimError(f"{path} line {line}: {image} is not a {'/'.join(IMAGE_SUFFIXES)} image")
            rows.append((image, {name.strip() for name in row[1].split(";") if name.strip()}))
    if not rows:
        raise IsimError(f"{path} lists no images")
    return rows


def folder_classes(root: Path, splits: list[str]) -> tuple[str, ...]:
    """``background`` and the foreground classes: ``classes.txt``'s, or the sorted names the split CSVs use."""
    listed = root / "classes.txt"
    if listed.is_file():
        names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        if "background" in names or len(set(names)) < len(names) or not names:
            raise IsimError(f"{listed} must list each foreground class once (background is implied)")
    else:
        names = sorted({name for split in splits for _, row in read_rows(split_csv(root, split)) for name in row})
        if not names:
            raise IsimError(f"the CSVs under {root} name no class; label the images or add classes.txt")
    return ("background", *names)
