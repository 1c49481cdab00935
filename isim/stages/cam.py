"""``stage=cam``: train the classifier on image-level labels, then evaluate its CAMs against GT masks."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from isim.data import WSSSDataModule
from isim.data.dataset import LabelledImages
from isim.errors import IsimError
from isim.metrics import labels_from_cams, mean_iou, sweep_report
from isim.models import Classifier
from isim.models.segmenter import Segmenter
from isim.modules import CAMInference, ClassifierModule, SegmenterModule
from isim.modules.checkpoint import check_classes, load_module
from isim.stages.common import build_datamodule, build_trainer, finish, fit, log_results, resume_checkpoint, timed
from isim.stages.fingerprint import determining
from isim.visualize import overlay_strip

log = logging.getLogger(__name__)
UNSCORED_THRESHOLD = 0.3  # the overlays' background score where no GT masks score the sweep (ISIM's constant)


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    timings: dict[str, float] = {}
    if cfg.cam.train:
        datamodule = build_datamodule(cfg)
        trainer = build_trainer(cfg, max_epochs=cfg.cam.max_epochs, datamodule=datamodule)
        with timed(timings, "train_s"):
            module, classifier_metrics = train_classifier(cfg, datamodule, trainer, output_dir)
        net, model = module.net, {key: module.hparams[key] for key in ("backbone", "output_stride", "pretrained")}
        model["epochs"] = trainer.current_epoch
    else:
        given, classifier_metrics = given_module(cfg), {}
        net, datamodule = given.net, build_datamodule(cfg, backbone=given.net.backbone_name)
        check_classes(cfg.ckpt_path, given.hparams.classes, datamodule.classes)
        trainer = build_trainer(cfg, max_epochs=0)
        model = {"backbone": net.backbone_name, "checkpoint": str(cfg.ckpt_path), "network": type(net).__name__}
    with timed(timings, "cam_s"):
        inference, images = evaluate_cams(cfg, net, datamodule, trainer, output_dir)
    confusion = inference.sweep.compute().cpu()
    report = sweep_report(confusion, cfg.cam.thresholds, datamodule.classes)
    timings["total_s"] = round(time.perf_counter() - start, 2)
    timings["cam_images_per_s"] = round(images / max(timings["cam_s"], 1e-9), 2)
    summary = {
        "stage": "cam",
        "name": cfg.name,
        "determined_by": determining(cfg, "cam"),  # what iterate compares before reusing it
        "uses_gt": False,  # trained on image labels; the GT masks only score the CAMs
        "data": {
            "name": datamodule.name,
            "root": str(datamodule.root),
            "split": cfg.cam.split,
            "images": images,
            "train_images_left_out": datamodule.left_out,  # COCO: train images without any instance
            "mean": list(datamodule.mean),  # the input normalisation: data.mean/std, or the backbone's
            "std": list(datamodule.std),
        },
        "model": model,
        "classifier": classifier_metrics,
        "cam": {
            "scales": list(cfg.cam.scales),
            "flip": cfg.cam.flip,
            **report,
            "all_background_miou": _all_background_miou(confusion[0]),
        },
        "timings": timings,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if report["best_miou"] is None:
        masks = datamodule.root / datamodule.mask_dir
        log.warning("no GT masks in %s: the CAMs are not scored (CAM mIoU needs masks)", masks)
    else:
        log.info(
            "CAM mIoU %.4f at background threshold %.2f (all-background baseline %.4f)",
            report["best_miou"],
            report["best_threshold"],
            summary["cam"]["all_background_miou"],
        )
    if report["best_at_edge"]:
        threshold = report["best_threshold"]
        log.warning("best CAM threshold %.2f is an end of cam.thresholds; the optimum may lie beyond", threshold)
    _log(trainer, report, inference, datamodule.split(cfg.cam.split), output_dir)
    return finish(trainer, output_dir, summary)


def train_classifier(
    cfg: DictConfig, datamodule: WSSSDataModule, trainer: pl.Trainer, output_dir: Path
) -> tuple[ClassifierModule, dict[str, float]]:
    """Fit (or resume) the classifier; returns it with its last validation metrics."""
    module: ClassifierModule = instantiate(cfg.model.classifier, classes=list(datamodule.classes))
    resume = resume_checkpoint(cfg.ckpt_path, output_dir, dict(module.hparams))
    return module, fit(trainer, module, datamodule, resume)  # read now, before the CAM inference loop


def given_module(cfg: DictConfig) -> ClassifierModule | SegmenterModule:
    """``cam.train=false``: the module of ``ckpt_path``, a classifier or a segmenter (ISIM's own CAMs)."""
    if cfg.ckpt_path in (None, "last"):
        raise IsimError("cam.train=false scores a checkpoint's CAMs: give ckpt_path=<classifier or segmenter .ckpt>")
    return load_module(Path(cfg.ckpt_path))


def evaluate_cams(
    cfg: DictConfig, net: Classifier | Segmenter, datamodule: WSSSDataModule, trainer: pl.Trainer, output_dir: Path
) -> tuple[CAMInference, int]:
    """Multi-scale + flip CAMs over ``cam.split`` into the threshold sweep; returns it and the image count."""
    save_dir = output_dir / "cams" if cfg.cam.save else None
    inference = CAMInference(
        net, cfg.cam.scales, cfg.cam.flip, cfg.cam.thresholds, len(datamodule.classes), save_dir, cfg.cam.overlays
    )
    loader = datamodule.eval_dataloader(cfg.cam.split)
    trainer.predict(inference, dataloaders=loader, return_predictions=False)
    return inference, len(loader.dataset)


def _all_background_miou(confusion: torch.Tensor) -> float:
    """mIoU of predicting background everywhere, over the classes present in the ground truth."""
    gt_only = torch.zeros_like(confusion)
    gt_only[:, 0] = confusion.sum(1)
    return mean_iou(gt_only)


def _log(trainer: pl.Trainer, report: dict, inference: CAMInference, split: LabelledImages, output_dir: Path) -> None:
    scored = report["best_miou"] is not None
    metrics = {"cam/best_miou": report["best_miou"], "cam/best_threshold": report["best_threshold"]} if scored else {}
    rows = [[row["threshold"], row["miou"]] for row in report["sweep"]]
    shown = report["best_threshold"] if scored else UNSCORED_THRESHOLD
    images = {}
    for name, cams, mask in inference.kept:
        pred = labels_from_cams(torch.from_numpy(cams)[None], shown)[0].numpy().astype(np.uint8)
        images[name] = overlay_strip(split.read_image(name), cams.max(0), pred, mask.astype(np.uint8))
    log_results(
        trainer, metrics, {"cam/threshold_sweep": (["threshold", "miou"], rows)}, images, output_dir / "overlays"
    )
