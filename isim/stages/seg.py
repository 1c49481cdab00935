"""``stage=seg``: train ISIM's segmenter on a label store (or on GT masks, the fully-supervised reference)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from isim.data import WSSSDataModule
from isim.errors import IsimError, brief
from isim.models.weights import CHECKPOINT_BACKBONES
from isim.modules import SegmenterModule
from isim.modules.checkpoint import check_classes
from isim.pseudo_labels import LabelStore
from isim.stages.common import build_datamodule, build_trainer, finish, fit, resume_checkpoint, timed, uses_gt

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    trainer = build_trainer(cfg, max_epochs=cfg.seg.max_epochs, datamodule=datamodule)
    timings: dict[str, float] = {}
    with timed(timings, "train_s"):
        module, val = train_segmenter(cfg, datamodule, trainer, output_dir, cfg.seg.init)
    timings["total_s"] = round(time.perf_counter() - start, 2)
    summary = {
        "stage": "seg",
        "name": cfg.name,
        "uses_gt": uses_gt(cfg),
        "labels": datamodule.labels,
        "model": {key: module.hparams[key] for key in ("backbone", "decoder", "output_stride", "pretrained")},
        "epochs": trainer.current_epoch,
        "trained_without": datamodule.skipped,  # images the labels stage skipped (labels.on_error=skip)
        "val": val,
        "timings": timings,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    return finish(trainer, output_dir, summary)


def train_segmenter(
    cfg: DictConfig,
    datamodule: WSSSDataModule,
    trainer: pl.Trainer,
    output_dir: Path,
    warm_start: str | Path | None = None,
) -> tuple[SegmenterModule, dict[str, Any]]:
    """Fit (or resume) the segmenter on ``datamodule.labels``; a fresh run starts from ``warm_start``'s
    weights when given. Returns it with its last validation mIoU and per-class IoU."""
    if datamodule.labels != "gt":
        names = datamodule.split(datamodule.train_split, check_images=False).names
        datamodule.skipped = check_store(LabelStore(datamodule.labels), names)
    # A warm start replaces the encoder's weights: never ask the hub (or a file) for them first.
    weights = {"pretrained": False} if warm_start is not None else {}
    module: SegmenterModule = instantiate(cfg.model.segmenter, classes=list(datamodule.classes), **weights)
    resume = resume_checkpoint(cfg.ckpt_path, output_dir, dict(module.hparams))
    if resume is None and warm_start is not None:
        load_weights(module, warm_start)
    miou = fit(trainer, module, datamodule, resume).get("val/mIoU", float("nan"))
    log.info("segmenter val mIoU %.4f (trained on %s)", miou, datamodule.labels)
    per_class = dict(zip(datamodule.classes, module.last_val_iou, strict=True)) if module.last_val_iou else {}
    return module, {"split": datamodule.val_split, "miou": miou, "per_class_iou": per_class}


def load_weights(module: SegmenterModule, path: Path) -> None:
    """Start from a checkpoint's weights; optimizer and schedule start fresh. A segmenter checkpoint (the
    previous round) gives every weight; a classifier (the CAM stage) gives the encoder and classification head."""
    if not Path(path).is_file():
        raise IsimError(f"warm-start checkpoint {path} not found; run the stage that makes it, or set it to null")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved, weights = checkpoint.get("hyper_parameters", {}), checkpoint.get("state_dict", {})
    check_classes(path, saved.get("classes", []), module.hparams.classes)
    if saved.get("backbone") != module.hparams.backbone:
        raise IsimError(
            f"{path} has backbone {saved.get('backbone')!r}, not model.backbone="
            f"{module.hparams.backbone!r}; warm starts need the same backbone"
        )
    if "decoder" not in saved:  # a classifier: its backbone is the encoder's timm model, net.head.* the head
        classifier, segmenter = CHECKPOINT_BACKBONES
        weights = {key.replace(classifier, segmenter, 1): value for key, value in weights.items()}
    try:
        unexpected = module.load_state_dict(weights, strict="decoder" in saved).unexpected_keys
        if unexpected:
            raise RuntimeError(f"unexpected weights {unexpected[:3]}")
    except RuntimeError as error:
        raise IsimError(
            f"{path} does not fit this segmenter ({brief(error)}); warm starts need the same model.* settings"
        ) from None
    log.info("warm start from %s", path)


def check_store(store: LabelStore, names: list[str]) -> list[str]:
    """A label store the segmenter can train on: complete, with a label for every training image but those its
    labels stage skipped (``labels.on_error=skip``: unreadable images), which it returns: training leaves them
    out and the summary lists them."""
    manifest = store.manifest()
    if manifest is None:
        raise IsimError(
            f"data.labels={store.root} is not a label store (no manifest.json); run stage=labels first, "
            "or train on GT masks with data.labels=gt"
        )
    skipped = set(manifest.get("counts", {}).get("skipped", {}))
    missing = [name for name in store.missing(names) if name not in skipped]
    if missing or not manifest.get("complete"):
        raise IsimError(
            f"label store {store.root} is incomplete ({len(missing)} of {len(names)} training images "
            f"missing, e.g. {missing[:3]}); re-run stage=labels to complete it"
        )
    return sorted(skipped & set(names))
