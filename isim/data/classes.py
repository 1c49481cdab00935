"""PASCAL VOC 2012 class names, indices and the standard colour palette."""

from __future__ import annotations

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC palette as a flat RGB list: index bits spread over the colour channels."""
    palette = []
    for index in range(256):
        rgb, bits = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette.extend(rgb)
    return palette
