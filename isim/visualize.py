"""Overlays of images, CAMs and label maps for logs and dashboards."""

from __future__ import annotations

import cv2
import numpy as np

from isim.data.classes import voc_palette

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
