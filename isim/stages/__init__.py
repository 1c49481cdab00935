"""The pipeline's stages, by the name that ``stage=<name>`` selects."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from isim.errors import IsimError, brief
from isim.models import check_backbone
from isim.stages import cam, iterate, labels, round, seg
from isim.stages.jobs import needs_own_process, quiet_secondary_ranks, run_child_job
from isim.stages.lock import run_lock

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "cam": cam.run,
    "labels": labels.run,
    "seg": seg.run,
    "round": round.run,
    "iterate": iterate.run,
}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Seed everything, check the cheap-to-check keys up front, then run the selected stage."""
    quiet_secondary_ranks()
    if cfg.stage.name not in STAGES:
        raise IsimError(f"stage={cfg.stage.name} is not implemented; available: {', '.join(STAGES)}")
    check_backbone(cfg.model.backbone)
    if needs_own_process(cfg):
        output_dir = Path(cfg.paths.output_dir)
        log.info("DDP sweep job: running it as a single run in %s", output_dir)
        if run_child_job(cfg, output_dir, ()) != 0:
            raise IsimError(f"sweep job {output_dir.name} failed; see {output_dir}")
        return json.loads((output_dir / "summary.json").read_text())
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        with run_lock(Path(cfg.paths.output_dir)):
            return STAGES[cfg.stage.name](cfg)
    except RuntimeError as error:
        if not lost_a_peer(error):
            raise
        rank = torch.distributed.get_rank()
        raise IsimError(
            f"rank {rank}: another process of this DDP run stopped ({brief(error, 100)}); its own output "
            "says why. The same command resumes from the last checkpoint"
        ) from error


def lost_a_peer(error: RuntimeError) -> bool:
    """A collective failed because another rank died (gloo sees its socket close; NCCL raises DistError)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return False
    return isinstance(error, torch.distributed.DistError) or "by peer" in str(error)
