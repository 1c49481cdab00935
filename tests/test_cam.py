"""CAM computation: shapes, normalisation, flip equivariance, and its link to the classifier logits."""

from __future__ import annotations

import pytest
import torch

from isim.cam import class_scores, multiscale_cams, normalize_cams
from isim.models import Classifier
from isim.models.segmenter import Segmenter


@pytest.fixture(scope="module")
def net() -> Classifier:
    torch.manual_seed(0)
    return Classifier("resnet10t", num_classes=20, pretrained=False).eval()


def test_cam_is_the_head_on_features_and_averages_to_the_logits(net: Classifier) -> None:
    images = torch.randn(2, 3, 64, 80)
    cams = net.cam(images)
    assert cams.shape == (2, 20, 4, 5)  # output stride 16
    torch.testing.assert_close(cams.mean((2, 3)), net(images))


def test_multiscale_cams_have_image_size_and_are_nonnegative(net: Classifier) -> None:
    images = torch.randn(2, 3, 60, 84)
    cams = multiscale_cams(net, images, scales=(1.0, 0.5, 1.5))
    assert cams.shape == (2, 20, 60, 84) and (cams >= 0).all() and cams.sum() > 0


def test_flip_fused_cams_are_flip_equivariant(net: Classifier) -> None:
    images = torch.randn(1, 3, 64, 96)
    cams = multiscale_cams(net, images, scales=(1.0, 0.5), flip=True)
    flipped = multiscale_cams(net, images.flip(-1), scales=(1.0, 0.5), flip=True)
    torch.testing.assert_close(flipped, cams.flip(-1), atol=1e-4, rtol=1e-4)
    # Without flip fusion the maps are not symmetric in this way, so the check above has teeth.
    plain = multiscale_cams(net, images, scales=(1.0,), flip=False)
    assert not torch.allclose(multiscale_cams(net, images.flip(-1), scales=(1.0,), flip=False), plain.flip(-1))


def test_normalize_keeps_only_present_classes_at_max_one() -> None:
    cams = torch.rand(2, 20, 8, 8) * 5
    labels = torch.zeros(2, 20)
    labels[0, [3, 7]] = 1
    labels[1, 0] = 1
    out = normalize_cams(cams, labels)
    peaks = out.amax((2, 3))
    torch.testing.assert_close(peaks[labels.bool()], torch.ones(3), atol=1e-4, rtol=0)
    assert (peaks[~labels.bool()] == 0).all()


def test_segmenter_scores_keep_its_own_background(net: Classifier) -> None:
    """label_source=seg: the class scores are the segmenter's softmax over background and the image's classes,
    and its background probability comes with them (no constant stands in for it); CAMs bring none."""
    torch.manual_seed(0)
    segmenter = Segmenter("resnet10t", 21, pretrained=False).eval()
    images, labels = torch.randn(2, 3, 48, 64), torch.zeros(2, 20)
    labels[0, [2, 7]] = labels[1, 11] = 1
    scores, background = class_scores(segmenter, images, labels, "seg", scales=(1.0,), flip=False)
    with torch.no_grad():
        logits = segmenter(images)[0]
    present = torch.cat([torch.ones(2, 1), labels], 1)[:, :, None, None] > 0
    softmax = logits.masked_fill(~present, float("-inf")).softmax(1)
    torch.testing.assert_close(background, softmax[:, 0])
    torch.testing.assert_close(scores, softmax[:, 1:])
    torch.testing.assert_close(background + scores.sum(1), torch.ones(2, 48, 64))
    assert class_scores(net, images, labels, "cam")[1] is None
    # Logit adjustment: the offsets come off the logits before the softmax; a rare class gains where it was unsure.
    offsets = torch.log(torch.tensor([0.85] + [0.07] * 20))
    scores, background = class_scores(segmenter, images, labels, "seg", (1.0,), False, offsets)
    adjusted = (logits - offsets[None, :, None, None]).masked_fill(~present, float("-inf")).softmax(1)
    torch.testing.assert_close(background, adjusted[:, 0])
    torch.testing.assert_close(scores, adjusted[:, 1:])
    assert (background < softmax[:, 0]).all()
