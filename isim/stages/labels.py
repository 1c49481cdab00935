"""``stage=labels``: the CAM stage's classifier -> CAMs -> dense CRF -> a label store, evaluated against GT."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from tqdm import tqdm

from isim.data import WSSSDataModule
from isim.data.dataset import LabelledImages
from isim.errors import IsimError
from isim.io import write_json
from isim.metrics import confusion_matrix, mean_iou, segmentation_report
from isim.modules import CAMInference
from isim.modules.checkpoint import load_network
from isim.pseudo_labels import LabelSettings, LabelStore, LabelWriter, default_workers, settings_from_config
from isim.size_prior import Solver, score_sample, threshold_for_share
from isim.stages.common import build_datamodule, build_trainer, finish, log_results, timed, uses_gt
from isim.stages.fingerprint import determining
from isim.visualize import overlay_strip

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    checkpoint = cam_network_checkpoint(cfg)
    cam_summary = cam_stage_summary(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    data = datamodule.split(cfg.labels.split, check_images=cfg.labels.on_error == "raise")
    trainer = build_trainer(cfg, max_epochs=1)
    scoring = LabelJob(checkpoint, settings_from_config(cfg.crf, 0.5, None), "cam", tuple(cfg.cam.scales), cfg.cam.flip)
    store = LabelStore(cfg.labels.store_dir)
    sized = partial(sized_to_prior, cfg, datamodule, data, trainer, threshold_for_share, store, scoring)
    settings = settings_from_config(cfg.crf, background_threshold(cfg, cam_summary, sized), cfg.labels.confident)
    job = dataclasses.replace(scoring, settings=settings)
    result = make_labels(cfg, trainer, datamodule, data, job, store, cfg.labels.overwrite)
    if not trainer.is_global_zero:
        return {}
    summary = {
        "stage": "labels",
        "name": cfg.name,
        "determined_by": determining(cfg, "labels"),  # what iterate compares before reusing it
        "uses_gt": uses_gt(cfg),
        "checkpoint": str(checkpoint),
        "threshold": settings.threshold,
        "settings": dataclasses.asdict(settings),
        **result,
        "cam_best_miou": cam_summary["cam"]["best_miou"] if cam_summary else None,
        # The CAMs at this threshold before the CRF: against labels.miou, what the CRF added or took away
        # (none in the two-threshold mode, whose labels come from two thresholds).
        "cam_miou_at_threshold": None if settings.confident else cam_miou_at(cam_summary, settings.threshold),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    summary["timings"]["total_s"] = round(time.perf_counter() - start, 2)
    if summary["cam_miou_at_threshold"] is not None and result["labels"]["scored"]:
        before, after = summary["cam_miou_at_threshold"], result["labels"]["miou"]
        log.info("the CAMs at threshold %.2f score %.4f before the CRF, %.4f after", settings.threshold, before, after)
    return finish(trainer, output_dir, summary)


@dataclasses.dataclass(frozen=True)
class LabelJob:
    """What makes a store's labels: a checkpoint's scores (``source``, at ``scales``) refined by ``settings``."""

    checkpoint: Path
    settings: LabelSettings
    source: str = "cam"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = True
    offsets: tuple[float, ...] | None = None  # logit adjustment of a segmenter's softmax (iterate.logit_adjustment)


def make_labels(
    cfg: DictConfig,
    trainer: pl.Trainer,
    datamodule: WSSSDataModule,
    data: LabelledImages,
    job: LabelJob,
    store: LabelStore,
    overwrite: bool,
    previous: LabelStore | None = None,
) -> dict[str, Any]:
    """Label ``data`` into ``store`` (sharded over DDP ranks), then evaluate it on rank 0 (against GT, and
    against ``previous`` labels: the changed fraction); resumes a store of the same job."""
    net = load_network(job.checkpoint, data.classes)  # refused before anything is written
    if trainer.is_global_zero:
        store.open(_producer(job, data, datamodule), overwrite, job.checkpoint)
    trainer.strategy.barrier()
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    device = crf_device(trainer, job.settings)
    share = max(1, default_workers() // trainer.num_devices)  # this process's cores: the node's over its ranks
    workers = 0 if device is not None else share if cfg.crf.workers is None else int(cfg.crf.workers)
    if on_cpu:
        # Score inference and the CRF workers share the process's cores: give torch what the workers leave.
        torch.set_num_threads(max(1, share - workers))
    timings: dict[str, float] = {}
    writer = LabelWriter(
        store,
        data.image_path,
        job.settings,
        workers,
        cfg.labels.on_error,
        progress=trainer.is_global_zero,
        device=device,
        batch_size=cfg.crf.batch_size,
    )
    inference = CAMInference(
        net,
        job.scales,
        job.flip,
        [job.settings.threshold],
        len(data.classes),
        keep=cfg.labels.overlays,
        writer=writer,
        source=job.source,
        offsets=job.offsets,
    )
    unlabelled = Unlabelled(datamodule, data, store, overwrite, writer)
    with timed(timings, "label_s"):
        try:
            trainer.predict(inference, datamodule=unlabelled, return_predictions=False)
        finally:
            writer.close()
    skipped = _gather_skipped(writer.skipped)
    if not trainer.is_global_zero:
        return {}
    with timed(timings, "eval_s"):
        evaluation = evaluate_store(store, data, previous)
    labelled_now = len(unlabelled.todo) - len(store.missing(unlabelled.todo))  # by every rank
    timings["images_per_s"] = round(labelled_now / max(timings["label_s"], 1e-9), 2)
    counts = {
        "images": len(data),
        "labelled_now": labelled_now,
        "skipped": skipped,
        "in_store": len(data) - len(store.missing(data.names)),
    }
    store.close(counts)
    if evaluation["scored"]:
        log.info("label mIoU %.4f, %.1f%% of pixels ignored", evaluation["miou"], 100 * evaluation["ignored_fraction"])
        _log(trainer, evaluation, inference, store, data, Path(cfg.paths.output_dir))
    return {
        "store": str(store.root),
        **counts,
        "labels": evaluation,
        "crf_workers": workers,
        "crf_device": str(device or "cpu"),
        "torch_threads": torch.get_num_threads(),
        "timings": timings,
    }


class Unlabelled(pl.LightningDataModule):
    """The predict loader over the images of ``data`` that ``store`` lacks (all of them when overwriting).

    The list is made once, by rank 0 inside the predict run (the process group is up by then), and broadcast:
    every rank shards the same list, where ranks listing a store on a network filesystem could each see
    another one."""

    def __init__(
        self, datamodule: WSSSDataModule, data: LabelledImages, store: LabelStore, overwrite: bool, writer: LabelWriter
    ) -> None:
        super().__init__()
        self.datamodule, self.data, self.store, self.overwrite, self.writer = datamodule, data, store, overwrite, writer
        self.todo: list[str] = []

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        listed = None
        if self.trainer.is_global_zero:
            listed = self.data.names if self.overwrite else self.store.missing(self.data.names)
        self.todo = self.trainer.strategy.broadcast(listed, src=0)
        self.writer.bar.reset(total=len(self.todo))
        return self.datamodule.eval_dataloader(self.data.subset(self.todo), tolerant=True)


def crf_device(trainer: pl.Trainer, settings: LabelSettings) -> torch.device | None:
    """Where the torch CRF runs on an accelerator: on the device, right after the scores (no worker processes);
    None for the CPU's worker processes."""
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    return None if on_cpu or settings.backend != "torch" else trainer.strategy.root_device


def _gather_skipped(skipped: dict[str, str]) -> dict[str, str]:
    """Every rank's skipped images (a collective: it is also the barrier after labelling)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return dict(skipped)
    gathered: list[dict[str, str]] = [{} for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather_object(gathered, skipped)
    return {name: message for part in gathered for name, message in part.items()}


def cam_network_checkpoint(cfg: DictConfig) -> Path:
    """The top-level ``ckpt_path`` when it names a file (a classifier or a segmenter), else the CAM stage's last."""
    given = cfg.ckpt_path not in (None, "none", "null", "last")
    path = Path(cfg.ckpt_path) if given else Path(cfg.labels.cam_dir) / "checkpoints" / "last.ckpt"
    if not path.is_file():
        hint = (
            "give an existing classifier .ckpt" if given else f"run `python train.py stage=cam name={cfg.name}` first"
        )
        raise IsimError(f"classifier checkpoint {path} not found; {hint} (or pass ckpt_path=<classifier .ckpt>)")
    return path


def cam_stage_summary(cfg: DictConfig) -> dict[str, Any] | None:
    """The CAM stage's summary.json (its best threshold and mIoU), if that stage has run."""
    path = Path(cfg.labels.cam_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cam_miou_at(cam_summary: dict[str, Any] | None, threshold: float) -> float | None:
    """The CAM sweep's mIoU at ``threshold`` (None without a scored sweep or where it did not sweep that value)."""
    rows = cam_summary["cam"]["sweep"] if cam_summary else []
    return next((row["miou"] for row in rows if abs(row["threshold"] - threshold) < 1e-9), None)


def background_threshold(cfg: DictConfig, cam_summary: dict[str, Any] | None, sized: Callable[[], float]) -> float:
    """``labels.threshold``: a number; ``share``: the threshold sized to labels.foreground_share (``sized()``,
    GT-free); ``oracle``: the CAM stage's best against the GT masks."""
    if cfg.labels.threshold == "share":
        if cfg.labels.confident:
            raise IsimError("labels.threshold=share sizes single-threshold labels; set labels.confident=null")
        threshold = sized()
        log.info("CAM threshold %.4f: its labels cover labels.foreground_share of the sample", threshold)
        return threshold
    if cfg.labels.threshold != "oracle":
        threshold = float(cfg.labels.threshold)
        if not 0 < threshold < 1:
            raise IsimError(
                f"labels.threshold={threshold} must be in (0, 1), `share` (labels.foreground_share) or `oracle`"
            )
        return threshold
    if cam_summary is None:
        summary = Path(cfg.labels.cam_dir) / "summary.json"
        raise IsimError(f"labels.threshold=oracle needs the CAM stage's {summary}; run stage=cam or give a number")
    if cam_summary["cam"]["best_miou"] is None:
        raise IsimError("labels.threshold=oracle needs GT masks (data.mask_dir); the CAM stage had none. Give a number")
    return float(cam_summary["cam"]["best_threshold"])


def sized_to_prior(
    cfg: DictConfig,
    datamodule: WSSSDataModule,
    data: LabelledImages,
    trainer: pl.Trainer,
    solve: Solver,
    store: LabelStore,
    job: LabelJob,
) -> float:
    """``share`` modes: what ``solve`` (``isim.size_prior``) finds on ``job``'s scores of a sample of ``data`` for
    labels.foreground_share, e.g. the CAM threshold whose labels cover it; every DDP rank takes rank 0's.

    Kept in ``store``'s ``sized.json`` for the same share, job and checkpoint file: a resumed store gets the value
    it was started with (on a GPU a recomputed one may differ in its last step, and the store would refuse it)."""
    share = foreground_share(cfg)
    record = store.root / "sized.json"
    made_for = {
        "share": share,
        "job": dataclasses.asdict(job),
        "checkpoint_mtime_ns": job.checkpoint.stat().st_mtime_ns,
    }
    made_for = json.loads(json.dumps(made_for, default=str))  # as the record reads back: tuples as lists
    saved = json.loads(record.read_text()) if record.is_file() and not cfg.labels.overwrite else {}
    if saved.get("made_for") == made_for:
        return saved["value"]
    net = load_network(job.checkpoint, data.classes)
    device = trainer.strategy.root_device
    sample = score_sample(net, datamodule, data, job.source, job.scales, job.flip, device, job.offsets)
    value = trainer.strategy.broadcast(solve(sample, job.settings, share, crf_device(trainer, job.settings)))
    if trainer.is_global_zero:
        store.root.mkdir(parents=True, exist_ok=True)
        write_json(record, {"made_for": made_for, "value": value})
    return value


def foreground_share(cfg: DictConfig) -> float:
    """``labels.foreground_share``, checked: the size prior that ``share`` modes match."""
    share = cfg.labels.get("foreground_share")
    if share is None or not 0 < float(share) < 1:
        raise IsimError(
            f"labels.foreground_share={share} must be in (0, 1) for labels.threshold, iterate.threshold or "
            "iterate.logit_adjustment=share: the share of image pixels that objects cover, e.g. 0.25"
        )
    return float(share)


def evaluate_store(store: LabelStore, data: LabelledImages, previous: LabelStore | None = None) -> dict[str, Any]:
    """Label mIoU, per-class IoU / precision / recall against GT over the pixels the labels do not ignore, and
    the mIoU in IRN's convention, where an ignored (255) label counts as background, so a mode that ignores
    pixels cannot look better by leaving out the hard ones; with ``previous``, the fraction of pixels whose label
    changed from it."""
    size = len(data.classes)
    confusion = torch.zeros(size, size, dtype=torch.long)
    as_background = torch.zeros_like(confusion)
    ignored = valid = changed = total = 0
    for name in tqdm(data.names, desc="evaluating labels", unit="img", leave=False):
        if not store.path(name).is_file():
            continue
        label = store.read(name)
        if previous is not None and previous.path(name).is_file():
            changed += int((previous.read(name) != label).sum())
            total += label.size
        gt = data.read_mask(name)
        if gt is None:
            continue
        counted = gt != 255
        valid += int(counted.sum())
        ignored += int((counted & (label == 255)).sum())
        target = np.where(label == 255, 255, gt)
        confusion += confusion_matrix(torch.from_numpy(label), torch.from_numpy(target), size)
        filled = np.where(label == 255, 0, label)
        as_background += confusion_matrix(torch.from_numpy(filled), torch.from_numpy(gt), size)
    report = {"changed_fraction": changed / total} if total else {}
    if valid:
        report.update(segmentation_report(confusion, data.classes), ignored_fraction=ignored / valid)
        report["miou_ignored_as_background"] = mean_iou(as_background)
    else:
        report["miou"] = None  # "scored": false says why, rather than a missing key
        log.warning("no GT masks for %s: the labels are not scored (label mIoU needs masks)", data.mask_dir)
    report["scored"] = bool(valid)
    return report


def _producer(job: LabelJob, data: LabelledImages, datamodule: WSSSDataModule) -> dict:
    """What a store's labels depend on; a store is only ever continued by the same producer."""
    return {
        "checkpoint_sha256": hashlib.sha256(job.checkpoint.read_bytes()).hexdigest(),
        "data_root": str(datamodule.root),
        "split": data.split,
        "classes": list(data.classes),
        "scores": {"source": job.source, "scales": list(job.scales), "flip": job.flip}
        | ({"offsets": list(job.offsets)} if job.offsets else {}),  # absent when off: older stores stay valid
        "settings": {  # background_bias absent when 0, as offsets when off: older stores stay valid
            key: value for key, value in dataclasses.asdict(job.settings).items() if value or key != "background_bias"
        },
    }


def _log(
    trainer: pl.Trainer,
    evaluation: dict,
    inference: CAMInference,
    store: LabelStore,
    data: LabelledImages,
    output_dir: Path,
) -> None:
    metrics = {"labels/miou": evaluation["miou"], "labels/ignored_fraction": evaluation["ignored_fraction"]}
    rows = [[name, *values.values()] for name, values in evaluation["per_class"].items()]
    images = {
        name: overlay_strip(data.read_image(name), cams.max(0), store.read(name), mask.astype(np.uint8))
        for name, cams, mask in inference.kept
        if store.path(name).is_file()
    }
    log_results(
        trainer,
        metrics,
        {"labels/per_class": (["class", "iou", "precision", "recall"], rows)},
        images,
        output_dir / "overlays",
    )
