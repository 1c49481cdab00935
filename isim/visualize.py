"""Overlays of images, CAMs and label maps, and the rounds' plot, for logs and dashboards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure  # pyplot-free: no GUI backend or global state on cluster nodes

from isim.data.classes import voc_palette
from isim.io import atomic_path

_PALETTE = np.array(voc_palette(), np.uint8).reshape(256, 3)


def colorize(labels: np.ndarray) -> np.ndarray:
    return _PALETTE[labels]


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image * (1 - alpha) + overlay * alpha).astype(np.uint8)


def heatmap(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a JET-coloured RGB image."""
    scaled = (np.clip(cam, 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_JET)[:, :, ::-1]


def overlay_strip(image: np.ndarray, cam: np.ndarray, *label_maps: np.ndarray) -> np.ndarray:
    """Side by side: the image, its strongest-class CAM, then each label map over the image."""
    panels = [image, blend(image, heatmap(cam))] + [blend(image, colorize(m)) for m in label_maps]
    return np.concatenate(panels, axis=1)


def rounds_plot(rounds: Sequence[int], series: dict[str, Sequence[float | None]], path: Path, title: str) -> None:
    """Each series (e.g. label mIoU, val mIoU) against the round, as a PNG at ``path``; missing values are gaps."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for name, values in series.items():
        points = [(k, 100 * v) for k, v in zip(rounds, values, strict=True) if v is not None]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=name)
    axes.set(xlabel="round (0 = the labels stage)", ylabel="mIoU (%)", title=title, xticks=list(rounds))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
