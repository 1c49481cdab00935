"""Lightning checkpoints: written durably, and a trained network loaded back, whichever module made it."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from isim.errors import IsimError, brief
from isim.io import atomic_path
from isim.models import Classifier
from isim.models.segmenter import Segmenter
from isim.modules.classifier import ClassifierModule
from isim.modules.segmenter import SegmenterModule


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through ``atomic_path``: written beside, fsynced, renamed, the directory
    fsynced, with the umask's permissions, so a crash or power loss leaves the previous ``last.ckpt`` or the new one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def load_module(path: Path) -> ClassifierModule | SegmenterModule:
    """The classifier or segmenter module of a checkpoint, its network in eval mode, read once; its
    ``hparams.classes`` are the class names it was trained on.

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
    module.net.eval()
    return module


def load_network(path: Path, classes: Sequence[str] | None = None) -> Classifier | Segmenter:
    """The network of a classifier or segmenter checkpoint (``load_module``); with ``classes``, refused unless it
    was trained on that class list."""
    module = load_module(path)
    if classes is not None:
        check_classes(path, module.hparams.classes, classes)
    return module.net


def check_classes(path: Path, trained: Sequence[str], data: Sequence[str]) -> None:
    """A checkpoint serves only data of the class list (names and order) it was trained on."""
    if list(trained) == list(data):
        return
    only_trained, only_data = sorted(set(trained) - set(data)), sorted(set(data) - set(trained))
    difference = f"only it has {only_trained}, only the data has {only_data}" if only_trained or only_data else ""
    raise IsimError(
        f"{path} was trained on {len(trained) - 1} classes, the data has {len(data) - 1} "
        f"({difference or 'the same names in another order'}); use a checkpoint made on this data's class list"
    )
