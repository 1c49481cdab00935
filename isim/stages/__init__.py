"""The pipeline's stages, by the name that ``stage=<name>`` selects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from isim.errors import IsimError
from isim.models import check_backbone
from isim.stages import cam, iterate, labels, round, seg

STAGES: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "cam": cam.run,
    "labels": labels.run,
    "seg": seg.run,
    "round": round.run,
    "iterate": iterate.run,
}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Seed everything, check the cheap-to-check keys up front, then run the selected stage."""
    if cfg.stage.name not in STAGES:
        raise IsimError(f"stage={cfg.stage.name} is not implemented; available: {', '.join(STAGES)}")
    check_backbone(cfg.model.backbone)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return STAGES[cfg.stage.name](cfg)
