"""``stage=seg``: train ISIM's segmenter on a label store (or on GT masks, the fully-supervised reference)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from isim.data import VOC_CLASSES, WSSSDataModule
from isim.errors import IsimError
from isim.modules import SegmenterModule
from isim.pseudo_labels import LabelStore
from isim.stages.common import build_trainer, finish, resume_checkpoint, timed

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    datamodule: WSSSDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    if datamodule.labels != "gt":
        check_store(LabelStore(datamodule.labels), datamodule.split(datamodule.train_split).names)
    module: SegmenterModule = instantiate(cfg.model.segmenter, num_classes=len(VOC_CLASSES))
    trainer = build_trainer(cfg, max_epochs=cfg.seg.max_epochs, datamodule=datamodule)
    timings: dict[str, float] = {}
    with timed(timings, "train_s"):
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=resume_checkpoint(cfg.ckpt_path, output_dir, dict(module.hparams)))  # fmt: skip
    per_class = dict(zip(VOC_CLASSES, module.last_val_iou, strict=True)) if module.last_val_iou else {}
    timings["total_s"] = round(time.perf_counter() - start, 2)
    summary = {
        "stage": "seg",
        "name": cfg.name,
        "labels": datamodule.labels,
        "model": {key: module.hparams[key] for key in ("backbone", "decoder", "output_stride", "pretrained")},
        "epochs": trainer.current_epoch,
        "val": {
            "split": datamodule.val_split,
            "miou": float(trainer.callback_metrics.get("val/mIoU", float("nan"))),
            "per_class_iou": per_class,
        },
        "timings": timings,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    log.info("segmenter val mIoU %.4f (trained on %s)", summary["val"]["miou"], datamodule.labels)
    return finish(trainer, output_dir, summary)


def check_store(store: LabelStore, names: list[str]) -> None:
    """A label store the segmenter can train on: complete, with a label for every training image."""
    manifest = store.manifest()
    if manifest is None:
        raise IsimError(f"data.labels={store.root} is not a label store (no manifest.json); run stage=labels first, "
                        "or train on GT masks with data.labels=gt")  # fmt: skip
    missing = store.missing(names)
    if missing or not manifest.get("complete"):
        raise IsimError(f"label store {store.root} is incomplete ({len(missing)} of {len(names)} training images "
                        f"missing, e.g. {missing[:3]}); re-run stage=labels to complete it")  # fmt: skip
