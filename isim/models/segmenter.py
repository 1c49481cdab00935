"""ISIM's segmenter: an SMP encoder-decoder over a timm encoder, plus a bias-free classification head.

The head sits on the encoder's deepest features (global average pooling + 1x1 conv, no bias),
so the segmenter also classifies and its CAMs are that conv applied to the feature map, exactly
as for the classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from isim.errors import IsimError
from isim.models.backbone import check_backbone, freeze_batchnorm
from isim.models.weights import from_hub, load_backbone_weights

DILATED_DECODERS = {"deeplabv3", "deeplabv3plus"}  # the SMP decoders that take an encoder output stride


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """``images`` padded at the bottom and right (with 0, the normalised mean colour) to a multiple of ``multiple``."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, -width % multiple, 0, -height % multiple))


class Segmenter(nn.Module):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        decoder: str = "deeplabv3plus",
        pretrained: bool | str = True,
        output_stride: int = 16,
        decoder_args: Mapping[str, Any] | None = None,
        freeze_bn: bool = False,
    ) -> None:
        """``pretrained``: the encoder's weights from the timm hub (True), none (False) or a local file (a path).
        ``decoder_args``: more keyword arguments of SMP's architecture (e.g. ``decoder_atrous_rates``).
        ``freeze_bn``: the encoder's BatchNorm layers keep their statistics and affine weights."""
        super().__init__()
        check_backbone(backbone)
        self.backbone_name = backbone  # what infer.py normalises its inputs for
        self.freeze_bn = freeze_bn
        extra = {"encoder_output_stride": output_stride} if decoder.lower() in DILATED_DECODERS else {}
        extra.update(decoder_args or {})
        weights = "imagenet" if pretrained is True else None

        def build() -> nn.Module:
            return smp.create_model(
                decoder, encoder_name=f"tu-{backbone}", encoder_weights=weights, classes=num_classes, **extra
            )

        try:
            self.model = from_hub(backbone, pretrained, build)
        except KeyError as error:
            raise IsimError(f"model.decoder={decoder!r} is not an SMP architecture ({error})") from None
        except TypeError as error:  # an argument the architecture does not take
            raise IsimError(f"model.decoder_args do not fit model.decoder={decoder!r}: {error}") from None
        if isinstance(pretrained, str):
            load_backbone_weights(self.model.encoder.model, pretrained, backbone)
        self.head = nn.Conv2d(self.model.encoder.out_channels[-1], num_classes - 1, 1, bias=False)
        self.train()  # freezes BatchNorm now, before an optimizer or DDP lists the trainable parameters

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits (B, num_classes, H, W) and multi-label logits (B, num_classes - 1).

        Any image size works: SMP needs multiples of the encoder stride, so the input is padded
        (with 0, the normalised mean colour) and the logits are cropped back.
        """
        height, width = images.shape[-2:]
        features = self.model.encoder(pad_to_multiple(images, self.model.encoder.output_stride))
        masks = self.model.segmentation_head(self.model.decoder(features))[..., :height, :width]
        return masks, self.head(features[-1].mean((2, 3), keepdim=True)).flatten(1)

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """Raw CAMs (B, num_classes - 1, h, w) of the classification head on the encoder's features."""
        return self.head(self.model.encoder(images)[-1])

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self.model.encoder)
        return self

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters by learning-rate group: ``encoder``, ``decoder`` (SMP's decoder and segmentation head)
        and ``head`` (the classification head)."""
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": [], "head": []}
        for name, param in self.named_parameters():
            encoder, head = name.startswith("model.encoder."), name.startswith("head.")
            groups["encoder" if encoder else "head" if head else "decoder"].append(param)
        return groups
