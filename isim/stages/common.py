"""What every stage needs: a Trainer from the config, resuming, logging results, the summary file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.loggers import Logger, WandbLogger

from isim.data import WSSSDataModule
from isim.data.transforms import input_normalization
from isim.errors import IsimError, brief
from isim.io import write_json, write_png
from isim.loggers import wandb_run_id
from isim.modules.checkpoint import DurableCheckpointIO

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, backbone: str | None = None, **overrides: Any) -> WSSSDataModule:
    """The configured data, its inputs normalised as ``backbone``'s (default: model.backbone's) weights expect
    unless data.mean / data.std are set."""
    mean, std = input_normalization(cfg.data.mean, cfg.data.std, backbone or cfg.model.backbone)
    return instantiate(cfg.data, mean=list(mean), std=list(std), seed=cfg.seed, **overrides)


def build_trainer(cfg: DictConfig, max_epochs: int, datamodule: WSSSDataModule | None = None) -> pl.Trainer:
    """The configured Trainer; with the DataModule it trains on, the global batch is checked before any
    DDP process starts."""
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    logger = build_logger(cfg) if cfg.get("logger") else False
    try:
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=logger, max_epochs=max_epochs, plugins=[DurableCheckpointIO()]
        )
    except InstantiationException as error:
        if not isinstance(error.__cause__, MisconfigurationException):
            raise
        gpus = torch.cuda.device_count()
        raise IsimError(
            f"the Trainer cannot start with trainer.accelerator={cfg.trainer.accelerator} trainer.devices="
            f"{cfg.trainer.devices} ({brief(error.__cause__)}); this machine has {gpus} GPU(s): use "
            "trainer=cpu or trainer=ddp_cpu without GPUs, or fewer trainer.devices"
        ) from None
    cores = os.cpu_count() or 1
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        log.warning(
            "trainer.devices=%d CPU processes on %d cores: they share cores and gain nothing over %d",
            trainer.num_devices,
            cores,
            cores,
        )
    if datamodule is not None:
        datamodule.per_device_batch_size(trainer.world_size)
    return trainer


def build_logger(cfg: DictConfig) -> Logger:
    """The configured logger; a W&B run continues the run dir's own run id, so a resumed step stays one run."""
    if cfg.logger._target_.endswith("WandbLogger"):
        return instantiate(cfg.logger, id=wandb_run_id(Path(cfg.paths.output_dir)), resume="allow")
    return instantiate(cfg.logger)


def resume_checkpoint(ckpt_path: str | None, output_dir: Path, hparams: dict[str, Any]) -> str | None:
    """The checkpoint to resume from: ``last`` is this run dir's own last checkpoint, if any.

    A checkpoint trained with other model settings is refused rather than silently mixed in.
    """
    if ckpt_path in (None, "none", "null"):
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        if ckpt_path == "last":
            return None
        raise IsimError(
            f"ckpt_path={ckpt_path} does not exist; give an existing .ckpt or ckpt_path=null to start fresh"
        )
    saved = torch.load(path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    changed = [
        f"{key}: {saved.get(key)!r} -> {hparams.get(key)!r}"
        for key in sorted(set(saved) | set(hparams))
        if saved.get(key) != hparams.get(key)
    ]
    if changed:
        raise IsimError(
            f"{path} was trained with other model settings ({'; '.join(changed)}); pass name=<new name> "
            "for a separate run, or ckpt_path=null to train from scratch here (the old checkpoint is replaced)"
        )
    log.info("resuming from %s", path)
    return str(path)


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 2)


def log_results(
    trainer: pl.Trainer,
    metrics: dict[str, float],
    tables: dict[str, tuple[list[str], list[list]]] | None = None,
    images: dict[str, np.ndarray] | None = None,
    image_dir: Path | None = None,
) -> None:
    """Scalars go to every logger; tables (key: (columns, rows)) and images to W&B; images also to ``image_dir``."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    images = images or {}
    if image_dir is not None:
        for name, image in images.items():
            write_png(image_dir / f"{name}.png", image)
    wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
    if wandb_logger is not None:
        for key, (columns, rows) in (tables or {}).items():
            wandb_logger.log_table(key, columns=columns, data=rows)
        if images:
            wandb_logger.log_image("overlays", images=list(images.values()), caption=list(images))


def fit(trainer: pl.Trainer, module: pl.LightningModule, datamodule: WSSSDataModule, resume: str | None) -> dict:
    """Train (or resume) ``module``; returns its last validation metrics (``val/...``). A resumed run whose
    training had finished trains no more and validates nothing, so it is validated once more: its summary then
    reports the finished model's figures, not NaN; unlogged, since the history has them at the last epoch."""
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if not any(key.startswith("val/") for key in trainer.callback_metrics):
        loggers, trainer.loggers = trainer.loggers, []
        try:
            trainer.validate(module, datamodule=datamodule, verbose=False)
        finally:
            trainer.loggers = loggers
    return {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}


def uses_gt(cfg: DictConfig) -> bool:
    """Whether pixel ground truth informed a choice of this run (summaries say so): the GT-best CAM threshold
    (``labels.threshold=oracle``) or GT masks as training labels (``data.labels=gt``). Scoring alone does not count."""
    return cfg.labels.threshold == "oracle" or cfg.data.labels == "gt"


def finish(trainer: pl.Trainer, output_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json`` (rank 0 only) and close the W&B run so the next job gets its own."""
    if trainer.is_global_zero:
        write_json(output_dir / "summary.json", summary)
        log.info("wrote %s", output_dir / "summary.json")
    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()
    return summary
