"""Loading a trained network from a Lightning checkpoint, whichever module made it."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from isim.errors import IsimError, brief
from isim.models import Classifier
from isim.models.segmenter import Segmenter
from isim.modules.classifier import ClassifierModule
from isim.modules.segmenter import SegmenterModule


def load_network(path: Path) -> Classifier | Segmenter:
    """The network of a classifier or segmenter checkpoint, in eval mode, read once.

    Never re-downloads pretrained weights: the checkpoint's own weights replace them anyway.
    """
    if not Path(path).is_file():
        raise IsimError(f"checkpoint {path} not found; give an existing .ckpt as ckpt_path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = {**checkpoint["hyper_parameters"], "pretrained": False}
        module = (SegmenterModule if "decoder" in hparams else ClassifierModule)(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as error:
        raise IsimError(f"{path} is not a classifier or segmenter checkpoint ({brief(error)})") from None
    return module.net.eval()
