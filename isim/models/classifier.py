"""The CAM classifier: backbone, global average pooling and a bias-free 1x1 conv head.

The head has no bias, so the CAM of class c is exactly the head applied to the feature map, and
the logit is its spatial mean: CAM and classification are the same computation.
"""

from __future__ import annotations

import torch
from torch import nn

from isim.models.backbone import create_backbone, freeze_batchnorm


class Classifier(nn.Module):
    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: bool | str = True,
        output_stride: int = 16,
        freeze_bn: bool = False,
    ) -> None:
        """``freeze_bn``: the backbone's BatchNorm layers keep their statistics and affine weights."""
        super().__init__()
        self.backbone_name = backbone  # what its inputs are normalised for
        self.freeze_bn = freeze_bn
        self.backbone = create_backbone(backbone, pretrained, output_stride)
        self.head = nn.Conv2d(self.backbone.feature_info.channels()[-1], num_classes, 1, bias=False)
        self.train()  # freezes BatchNorm now, before an optimizer or DDP lists the trainable parameters

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self.backbone)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)[-1]

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps (B, num_classes, h, w) at the feature resolution."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-label logits (B, num_classes)."""
        return self.head(self.features(images).mean((2, 3), keepdim=True)).flatten(1)
