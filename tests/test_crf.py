"""The dense CRF moves label boundaries onto image edges."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from isim.crf import crf_labels, crf_scores
from tests.conftest import ROOT

IRN = OmegaConf.load(ROOT / "conf/crf/irn.yaml")


def two_region_image() -> tuple[np.ndarray, np.ndarray]:
    """A textured dark disc on a light background, and its true mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    truth = ((yy - 32) ** 2 + (xx - 30) ** 2 < 14**2).astype(np.uint8)
    image = np.where(truth[..., None], 60, 200) + rng.normal(0, 6, (64, 64, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_label_crf_snaps_a_shifted_blob_to_the_edge() -> None:
    image, truth = two_region_image()
    seed = np.roll(truth, (5, 6), axis=(0, 1))  # a misplaced seed, as a coarse CAM gives
    refined = crf_labels(image, seed, 2, IRN.gt_prob, IRN.gaussian, IRN.bilateral, IRN.iterations)
    assert refined.shape == truth.shape and refined.dtype == np.uint8
    assert iou(refined.astype(bool), truth.astype(bool)) > iou(seed.astype(bool), truth.astype(bool)) + 0.15


def test_score_crf_sharpens_blurry_scores() -> None:
    image, truth = two_region_image()
    yy, xx = np.mgrid[:64, :64]
    fg = np.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / (2 * 16**2))  # a smooth blob, no edges
    scores = np.stack([np.full_like(fg, 0.45), fg]).astype(np.float32)
    scores /= scores.sum(0)
    blurry = scores.argmax(0).astype(bool)
    refined = crf_scores(image, scores, IRN.gaussian, IRN.bilateral, IRN.iterations).astype(bool)
    assert iou(refined, truth.astype(bool)) > iou(blurry, truth.astype(bool)) + 0.1
