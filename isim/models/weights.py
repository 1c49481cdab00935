"""Backbone weights: timm's hub (``model.pretrained=true``), none (``false``), or a local file (a path).

A file is a state dict with timm's key names for the backbone (``.pth``, ``.pt``, ``.safetensors``; read by
timm's own loader, which also unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints), or a Lightning
checkpoint of isim's (a classifier's backbone or a segmenter's encoder). Either way it goes into the
backbone's timm feature extractor, so classifier and segmenter take the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from timm.models import load_state_dict
from torch import nn

from isim.errors import IsimError, brief

T = TypeVar("T")
# Where an isim checkpoint keeps the backbone's timm feature extractor: a classifier, a segmenter (SMP's tu- encoder).
CHECKPOINT_BACKBONES = ("net.backbone.", "net.model.encoder.model.")


def from_hub(backbone: str, pretrained: bool | str, build: Callable[[], T]) -> T:
    """``build()`` a network; where it downloads ``backbone``'s weights (``pretrained=True``), a failed download
    (offline, empty cache) is one line saying what to do. Other errors are not the hub's and pass unchanged."""
    if pretrained is not True:
        return build()
    try:
        return build()
    except OSError as error:
        raise IsimError(
            f"cannot get the pretrained weights of model.backbone={backbone!r} from the timm hub ({brief(error)}); "
            "fill the Hugging Face cache on a machine with internet, give a local file "
            "(model.pretrained=/path/to/weights.pth), or set model.pretrained=false"
        ) from None


def load_backbone_weights(features: nn.Module, path: str | Path, backbone: str) -> None:
    """Load the weights file ``path`` into ``features`` (a timm feature extractor of ``backbone``). Its head
    and any layer past the last feature stage are not needed; every weight of ``features`` must be there."""
    state, expected = read_weights(Path(path)), features.state_dict()
    missing = [key for key in expected if key not in state]
    reshaped = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or reshaped:
        unexpected = [key for key in state if key not in expected]
        found = [
            (len(missing), "missing", missing),
            (len(reshaped), "of another shape", reshaped),
            (len(unexpected), "unexpected", unexpected),
        ]
        details = ", ".join(f"{count} {what} (e.g. {keys[0]})" for count, what, keys in found if count)
        raise IsimError(
            f"model.pretrained={path} does not fit model.backbone={backbone!r}: of its "
            f"{len(expected)} weights {details}; give a state dict with timm's key names for this "
            "backbone"
        )
    features.load_state_dict({key: state[key] for key in expected})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise IsimError(
            f"model.pretrained={path} not found; give a weights file (.pth, .pt, .safetensors or an "
            "isim .ckpt), true for the timm hub, or false"
        )
    try:
        state = load_state_dict(str(path), weights_only=False)
    except Exception as error:  # torch.load and safetensors raise many types for a file that is not weights
        raise IsimError(f"model.pretrained={path} is not a weights file ({brief(error)})") from None
    for prefix in CHECKPOINT_BACKBONES:
        inner = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if inner:
            return inner
    return state
