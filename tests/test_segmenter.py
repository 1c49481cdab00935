"""ISIM's segmenter: any input size, CAMs from its classification head, the joint loss and its masking."""

from __future__ import annotations

import pytest
import torch

from isim.errors import IsimError
from isim.models import Classifier
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


def test_param_groups_split_encoder_decoder_and_head() -> None:
    net = Segmenter("resnet10t", 21, pretrained=False)
    groups = {name: {id(p) for p in params} for name, params in net.param_groups().items()}
    assert groups["encoder"] == {id(p) for p in net.model.encoder.parameters()}
    assert groups["head"] == {id(net.head.weight)} and net.head.bias is None
    assert groups["decoder"] == {
        id(p) for p in [*net.model.decoder.parameters(), *net.model.segmentation_head.parameters()]
    }


def test_decoder_args_reach_smp() -> None:
    net = Segmenter("resnet10t", 21, pretrained=False, decoder_args={"decoder_atrous_rates": [6, 12, 18]})
    rates = [m.dilation[0] for m in net.model.decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1]
    assert rates == [6, 12, 18]  # SMP's own default is 12, 24, 36
    with pytest.raises(IsimError, match=r"model\.decoder_args do not fit model\.decoder='unet'"):
        Segmenter("resnet10t", 21, "unet", pretrained=False, decoder_args={"decoder_atrous_rates": [6, 12, 18]})


@pytest.mark.parametrize("network", ["classifier", "segmenter"])
def test_freeze_bn_keeps_the_backbone_statistics_and_weights(network: str) -> None:
    torch.manual_seed(0)
    if network == "classifier":
        net = Classifier("resnet10t", 20, pretrained=False, freeze_bn=True)
        backbone, logits = net.backbone, lambda images: net(images)
    else:
        net = Segmenter("resnet10t", 21, pretrained=False, freeze_bn=True)
        backbone, logits = net.model.encoder, lambda images: net(images)[1]
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    logits(torch.randn(4, 3, 64, 64)).sum().backward()
    optimizer.step()
    assert norms and all(not m.training and not m.weight.requires_grad for m in norms)
    assert all(torch.equal(m.running_mean, mean) for m, mean in zip(norms, before, strict=True))
    assert net.training and any(p.grad is not None for p in backbone.parameters())  # the convolutions still learn


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
