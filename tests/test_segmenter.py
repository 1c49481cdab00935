"""ISIM's segmenter: any input size, CAMs from its classification head, the joint loss and its masking."""

from __future__ import annotations

import pytest
import torch

from isim.errors import IsimError
from isim.models.segmenter import Segmenter
from isim.modules.segmenter import joint_loss


@pytest.mark.parametrize("decoder", ["deeplabv3plus", "unet"])
def test_segmenter_takes_any_size_and_its_cams_average_to_its_logits(decoder: str) -> None:
    torch.manual_seed(0)
    net = Segmenter("resnet10t", 21, decoder, pretrained=False).eval()
    images = torch.randn(2, 3, 75, 50)  # not a multiple of the encoder stride, like VOC's 500 x 375
    masks, logits = net(images)
    assert masks.shape == (2, 21, 75, 50) and logits.shape == (2, 20)
    if decoder == "deeplabv3plus":
        square = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(net.cam(square).mean((2, 3)), net(square)[1])


def test_heads_are_everything_but_the_encoder() -> None:
    net = Segmenter("resnet10t", 21, pretrained=False)
    encoder = {id(p) for p in net.model.encoder.parameters()}
    heads = {id(p) for p in net.heads()}
    assert not encoder & heads and encoder | heads == {id(p) for p in net.parameters()}
    assert id(net.head.weight) in heads and net.head.bias is None


def test_unknown_decoder_is_a_clear_error() -> None:
    with pytest.raises(IsimError, match=r"model\.decoder='deeplabv9'"):
        Segmenter("resnet10t", 21, "deeplabv9", pretrained=False)


def test_joint_loss_leaves_out_images_without_foreground_labels() -> None:
    torch.manual_seed(0)
    masks, logits = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 2)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.stack([torch.randint(0, 3, (4, 4)), torch.zeros(4, 4, dtype=torch.long)])  # image 2: all bg
    targets[0, 0, 0] = 1
    loss, parts = joint_loss(masks, logits, labels, targets)
    expected_seg = torch.nn.functional.cross_entropy(masks[:1], targets[:1])
    torch.testing.assert_close(parts["seg"], expected_seg.detach())
    loss.backward()
    assert masks.grad[1].abs().sum() == 0 and masks.grad[0].abs().sum() > 0  # no gradient from the masked image


def test_joint_loss_weights_and_an_all_masked_batch() -> None:
    masks, logits = torch.randn(1, 3, 4, 4, requires_grad=True), torch.randn(1, 2)
    labels = torch.tensor([[1.0, 0.0]])
    loss, parts = joint_loss(masks, logits, labels, torch.zeros(1, 4, 4, dtype=torch.long), cls_weight=2.0)
    assert parts["seg"] == 0 and torch.isclose(loss, 2 * parts["cls"])
    loss.backward()  # still differentiable (DDP needs every parameter in the graph)
