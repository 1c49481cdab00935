"""Dense CRF refinement: label maps and score maps snapped to image edges.

Two backends compute the same fully connected CRF (``crf.backend``):

- ``pydensecrf``: Krähenbühl's C++ permutohedral lattice, one image at a time on one CPU core (the reference);
- ``torch``: :mod:`isim.crf.meanfield` over :mod:`isim.crf.lattice`, pure torch ops on CPU or GPU, a whole
  batch of images in one call.

Both take per-image numpy inputs (images (H, W, 3) uint8) and return uint8 maps of the winning label index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pydensecrf.densecrf as dcrf
import torch
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from isim.crf.meanfield import dense_crf, label_unary, softmax_unary
from isim.errors import IsimError

BACKENDS = ("pydensecrf", "torch")


def crf_labels(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_labels: Sequence[int],
    gt_prob: float,
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
    backend: str = "pydensecrf",
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Refine label maps with values in [0, num_labels), each pixel trusted with ``gt_prob`` (IRN, ISIM)."""
    pairs = list(zip(labels, num_labels, strict=True))
    if check_backend(backend) == "pydensecrf":
        unaries = [unary_from_labels(label, n, gt_prob=gt_prob, zero_unsure=False) for label, n in pairs]
        return _pydensecrf_argmax(images, unaries, gaussian, bilateral, iterations)
    unaries = [label_unary(torch.as_tensor(label, device=device), n, gt_prob) for label, n in pairs]
    return _torch_argmax(images, unaries, gaussian, bilateral, iterations)


def crf_scores(
    images: Sequence[np.ndarray],
    scores: Sequence[np.ndarray | torch.Tensor],
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
    backend: str = "pydensecrf",
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Refine per-label probabilities (n, H, W), e.g. a softmax over background and CAM scores (numpy arrays, or
    tensors that the torch backend uses where they are)."""
    if check_backend(backend) == "pydensecrf":
        scores = [probs.cpu().numpy() if isinstance(probs, torch.Tensor) else probs for probs in scores]
        unaries = [unary_from_softmax(np.clip(probs, 1e-5, 1.0)) for probs in scores]
        return _pydensecrf_argmax(images, unaries, gaussian, bilateral, iterations)
    unaries = [softmax_unary(torch.as_tensor(probs, device=device)) for probs in scores]
    return _torch_argmax(images, unaries, gaussian, bilateral, iterations)


def check_backend(name: str) -> str:
    """``name`` if it is a CRF backend, else an error naming crf.backend."""
    if name not in BACKENDS:
        raise IsimError(f"crf.backend={name!r} is unknown; use one of {', '.join(BACKENDS)}")
    return name


def _pydensecrf_argmax(
    images: Sequence[np.ndarray],
    unaries: Sequence[np.ndarray],
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
) -> list[np.ndarray]:
    labels = []
    for image, unary in zip(images, unaries, strict=True):
        height, width = image.shape[:2]
        crf = dcrf.DenseCRF2D(width, height, unary.shape[0])
        crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(unary.shape[0], -1), dtype=np.float32))
        crf.addPairwiseGaussian(sxy=gaussian["sxy"], compat=gaussian["compat"])
        crf.addPairwiseBilateral(
            sxy=bilateral["sxy"], srgb=bilateral["srgb"], rgbim=np.ascontiguousarray(image), compat=bilateral["compat"]
        )
        marginals = np.asarray(crf.inference(iterations), np.float32).reshape(-1, height, width)
        labels.append(marginals.argmax(0).astype(np.uint8))
    return labels


@torch.no_grad()
def _torch_argmax(
    images: Sequence[np.ndarray],
    unaries: list[torch.Tensor],
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
) -> list[np.ndarray]:
    pixels = [torch.from_numpy(np.ascontiguousarray(image)) for image in images]
    marginals = dense_crf(pixels, unaries, gaussian, bilateral, iterations)
    return [q.argmax(0).to(torch.uint8).cpu().numpy() for q in marginals]
