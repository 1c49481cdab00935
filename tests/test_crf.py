"""The dense CRF moves label boundaries onto image edges, and its torch backend agrees with pydensecrf."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from isim.crf import BACKENDS, crf_labels, crf_scores
from isim.crf.meanfield import dense_crf, label_unary, softmax_unary
from isim.errors import IsimError
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_crf_snaps_a_shifted_blob_to_the_edge(backend: str) -> None:
    image, truth = two_region_image()
    seed = np.roll(truth, (5, 6), axis=(0, 1))  # a misplaced seed, as a coarse CAM gives
    (refined,) = crf_labels([image], [seed], [2], IRN.gt_prob, IRN.gaussian, IRN.bilateral, IRN.iterations, backend)
    assert refined.shape == truth.shape and refined.dtype == np.uint8
    assert iou(refined.astype(bool), truth.astype(bool)) > iou(seed.astype(bool), truth.astype(bool)) + 0.15


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_crf_sharpens_blurry_scores(backend: str) -> None:
    image, truth = two_region_image()
    yy, xx = np.mgrid[:64, :64]
    fg = np.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / (2 * 16**2))  # a smooth blob, no edges
    scores = np.stack([np.full_like(fg, 0.45), fg]).astype(np.float32)
    scores /= scores.sum(0)
    blurry = scores.argmax(0).astype(bool)
    (refined,) = crf_scores([image], [scores], IRN.gaussian, IRN.bilateral, IRN.iterations, backend)
    assert iou(refined.astype(bool), truth.astype(bool)) > iou(blurry, truth.astype(bool)) + 0.1


def photo_with_scores(seed: int, size: tuple[int, int], classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like image (shaded background, textured objects of ``classes`` colours, sensor noise) and
    CAM-like scores over background + classes: each object's mask shifted, blurred and max-normalised."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[:height, :width]
    image = rng.uniform(60, 200, 3) + 40 * np.stack([xx / width, yy / height, 1 - xx / width], -1)
    scores = [np.full((height, width), 0.3)]
    for _ in range(classes):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width, *rng.uniform(6, 20, 2)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image[mask] = rng.uniform(0, 255, 3) + rng.normal(0, 10, (int(mask.sum()), 3))
        shifted = np.roll(mask, tuple(rng.integers(-4, 5, 2)), (0, 1)).astype(np.float32)
        cam = cv2.GaussianBlur(shifted, (0, 0), 5)
        scores.append(cam / max(cam.max(), 1e-5))
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return image, np.stack(scores).astype(np.float32)


@pytest.mark.parametrize(("seed", "classes"), [(0, 1), (1, 2), (2, 3), (3, 4)])
def test_torch_backend_gives_pydensecrf_labels(seed: int, classes: int) -> None:
    """Same inputs, same CRF: >= 99.5% of pixels get pydensecrf's label, for both unaries and odd sizes."""
    image, scores = photo_with_scores(seed, (57 + 10 * seed, 83), classes)
    params = (IRN.gaussian, {"sxy": 20, "srgb": 5, "compat": 10}, IRN.iterations)
    seeds = scores.argmax(0)
    probs = scores / scores.sum(0)
    for unary, run in [
        ("label", lambda backend: crf_labels([image], [seeds], [classes + 1], IRN.gt_prob, *params, backend)[0]),
        ("softmax", lambda backend: crf_scores([image], [probs], *params, backend)[0]),
    ]:
        reference, ours = run("pydensecrf"), run("torch")
        assert (reference != seeds).mean() > 0.01, f"{unary}: the CRF should move some labels for the test to bite"
        assert (ours == reference).mean() >= 0.995, unary


def test_a_batch_is_each_image_on_its_own() -> None:
    """Images of different sizes and label counts in one call (one lattice, a group per image) give each
    image's own marginals: nothing leaks between the images of a batch."""
    first, second = photo_with_scores(4, (40, 52), 1), photo_with_scores(5, (33, 61), 3)
    images = [torch.from_numpy(image) for image, _ in (first, second)]
    unaries = [label_unary(torch.from_numpy(first[1].argmax(0)), 2, 0.7), softmax_unary(torch.from_numpy(second[1]))]
    bilateral = {"sxy": 20, "srgb": 5, "compat": 10}
    batch = dense_crf(images, unaries, IRN.gaussian, bilateral, 5)
    for image, unary, together in zip(images, unaries, batch, strict=True):
        (alone,) = dense_crf([image], [unary], IRN.gaussian, bilateral, 5)
        assert together.shape == unary.shape
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(together.sum(0), torch.ones(unary.shape[1:]))


def test_unknown_backend_is_refused_by_name() -> None:
    image, truth = two_region_image()
    with pytest.raises(IsimError, match=r"crf.backend='densecrf' is unknown; use one of pydensecrf, torch"):
        crf_labels([image], [truth], [2], 0.7, IRN.gaussian, IRN.bilateral, 1, backend="densecrf")
