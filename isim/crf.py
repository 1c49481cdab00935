"""Dense CRF refinement (pydensecrf): label maps and score maps snapped to image edges."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax


def crf_marginals(
    image: np.ndarray, unary: np.ndarray, gaussian: Mapping[str, float], bilateral: Mapping[str, float], iterations: int
) -> np.ndarray:
    """Mean-field marginals (n, H, W) from a unary energy (n, H*W) and the image (H, W, 3, uint8)."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, unary.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian["sxy"], compat=gaussian["compat"])
    crf.addPairwiseBilateral(sxy=bilateral["sxy"], srgb=bilateral["srgb"], rgbim=np.ascontiguousarray(image),
                             compat=bilateral["compat"])  # fmt: skip
    return np.asarray(crf.inference(iterations), np.float32).reshape(-1, height, width)


def crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    gt_prob: float,
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
) -> np.ndarray:
    """Refine a label map with values in [0, num_labels), each pixel trusted with ``gt_prob`` (IRN, ISIM)."""
    unary = unary_from_labels(labels, num_labels, gt_prob=gt_prob, zero_unsure=False)
    return crf_marginals(image, unary, gaussian, bilateral, iterations).argmax(0).astype(np.uint8)


def crf_scores(
    image: np.ndarray,
    scores: np.ndarray,
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
) -> np.ndarray:
    """Refine per-label probabilities (n, H, W), e.g. a softmax over background and CAM scores."""
    unary = unary_from_softmax(np.clip(scores, 1e-5, 1.0))
    return crf_marginals(image, unary, gaussian, bilateral, iterations).argmax(0).astype(np.uint8)
