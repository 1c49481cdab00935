"""Sizing labels to a size prior: the CAM threshold and the segmenter's background bias that make the labels,
after the CRF, cover a given share of the pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isim.size_prior import ScoredSample, background_bias_for_share, covered, sample_names, threshold_for_share
from tests.test_pseudo_labels import settings


def blob_sample(background: bool) -> ScoredSample:
    """Two images whose brightness ramps with a smooth blob score for one class each (no edge for the CRF to
    snap to); ``background``: a segmenter's own background score (1 - the blob) instead of the CAM threshold."""
    yy, xx = np.mgrid[:48, :48]
    sample = ScoredSample()
    for centre, width in (((20, 24), 9.0), ((30, 20), 6.0)):
        blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width**2)).astype(np.float32)
        sample.images.append(np.repeat(255 * blob[..., None], 3, axis=2).astype(np.uint8))
        sample.scores.append(blob[None])
        sample.classes.append(np.array([7]))
        sample.backgrounds.append(1 - blob if background else None)
    return sample


@pytest.mark.parametrize("share", [0.05, 0.25])
def test_the_threshold_for_a_share_labels_that_share(share: float) -> None:
    sample, crf = blob_sample(background=False), settings()
    threshold = threshold_for_share(sample, crf, share)
    assert 0 < threshold < 1
    assert covered(sample, dataclasses.replace(crf, threshold=threshold)) == pytest.approx(share, abs=0.01)


def test_the_background_bias_shrinks_a_segmenters_labels_to_the_share_but_never_grows_them() -> None:
    sample, crf = blob_sample(background=True), settings()
    own = covered(sample, crf)  # the segmenter's argmax: where the blob beats its complement
    bias = background_bias_for_share(sample, crf, own / 3)
    assert bias < 0  # the background's logit raised
    assert covered(sample, dataclasses.replace(crf, background_bias=bias)) == pytest.approx(own / 3, abs=0.01)
    assert background_bias_for_share(sample, crf, min(3 * own, 0.6)) == 0.0  # a larger prior keeps the argmax


def test_the_sample_spreads_over_a_list_ordered_by_class() -> None:
    """A CSV written class by class: 250 images of each of four classes. The sample holds 25 of each, in list
    order; a short list is sampled whole."""
    classes = ("cat", "dog", "car", "bus")
    names = [f"{cls}_{i:03d}" for cls in classes for i in range(250)]
    sample = sample_names(names)
    assert len(sample) == len(set(sample)) == 100
    assert sample == sorted(sample, key=names.index)
    assert {cls: sum(name.startswith(cls) for name in sample) for cls in classes} == dict.fromkeys(classes, 25)
    assert sample_names(names[:24]) == names[:24]
