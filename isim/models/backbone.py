"""Backbones: any timm model by name, as a dilated feature extractor."""

from __future__ import annotations

import difflib

import timm
from torch import nn

from isim.errors import IsimError
from isim.models.weights import from_hub, load_backbone_weights


def check_backbone(name: str) -> None:
    """Fail early, with close timm names, when ``name`` is not a timm model."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
        raise IsimError(f"model.backbone={name!r} is not a timm model; {hint}")


def create_backbone(name: str, pretrained: bool | str, output_stride: int = 16) -> nn.Module:
    """The deepest feature map of timm model ``name`` at 1/``output_stride`` of the input size, with weights from
    the timm hub (``pretrained=True``), none, or a local file (a path: :mod:`isim.models.weights`)."""
    check_backbone(name)

    def build() -> nn.Module:
        return timm.create_model(
            name, pretrained=pretrained is True, features_only=True, out_indices=(-1,), output_stride=output_stride
        )

    try:
        features = from_hub(name, pretrained, build)
    except (TypeError, AssertionError, ValueError) as error:
        raise IsimError(
            f"model.backbone={name!r} cannot run at model.output_stride={output_stride} ({error}); "
            "try output_stride 32 or a ResNet-like backbone"
        ) from None
    if isinstance(pretrained, str):
        load_backbone_weights(features, pretrained, name)
    return features


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm layer of ``module`` normalises with its running statistics and stops learning, as IRN's
    and ISIM's backbones do: ImageNet statistics beat those of small WSSS batches."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            layer.requires_grad_(False)
